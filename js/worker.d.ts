// gemma-webgpu/worker is a module Web Worker's script (the engine); it exports nothing. Start it
// with createWorkerGemma() from gemma-webgpu/client, or pass createWorkerGemma a Worker of it.
export {};
