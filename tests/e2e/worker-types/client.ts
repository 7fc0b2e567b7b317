// Compiled (never run) by worker.test.mjs: the worker client's types (pkg/client.d.ts) give
// the main-thread Gemma's methods as promises, keep chat.completions.create's two forms (with
// the `openai` package's types), and refuse what cannot cross the boundary.
import type OpenAI from 'openai';
import type { GemmaStats, LoadProgress } from 'gemma-webgpu';
import { createWorkerGemma, type WorkerGemma } from 'gemma-webgpu/client';

export async function main(): Promise<string> {
  const engine = createWorkerGemma({ onError: (e: Error) => console.warn(e.name) });
  const { webgpu } = await engine.ready;
  const controller = new AbortController();
  const gemma: WorkerGemma = await engine.load('/models/default/', {
    maxContext: 512,
    signal: controller.signal,
    onProgress: (p: LoadProgress) => console.log(p.phase, p.loadedBytes),
  });
  let text = await gemma.generate('Once', { maxTokens: 8, onToken: (t: string) => console.log(t), signal: controller.signal });
  for await (const piece of gemma.stream('Once', { maxTokens: 8 })) text += piece;
  text += await gemma.chat([{ role: 'user', content: 'Hi' }], { maxTokens: 4, logitBias: { 1: -100 } });
  const ids: Uint32Array = await gemma.tokenize('Hello', true);
  text += await gemma.detokenize(ids);
  const logits: Float32Array = await gemma.logits(ids);
  const stats: GemmaStats = await gemma.stats();
  const lp = (await gemma.logprobs(0))[0]?.top_logprobs[0]?.token ?? '';

  const request: OpenAI.Chat.Completions.ChatCompletionCreateParamsNonStreaming = {
    model: 'gemma', messages: [{ role: 'user', content: 'Why is the sky blue?' }], max_tokens: 16,
  };
  const completion: OpenAI.Chat.Completions.ChatCompletion = await gemma.chat.completions.create(request);
  const streamed: OpenAI.Chat.Completions.ChatCompletionCreateParamsStreaming = { ...request, stream: true };
  for await (const chunk of await gemma.chat.completions.create(streamed, { signal: controller.signal })) {
    const typed: OpenAI.Chat.Completions.ChatCompletionChunk = chunk;
    text += typed.choices[0]?.delta.content ?? '';
  }
  await gemma.reset();
  await gemma.dispose();
  await gemma.free();
  const cached = await engine.listCachedModels();
  const deleted: boolean = await engine.deleteCachedModel(cached[0]?.key ?? '');
  const report: string = await engine.adapterReport();
  const { Gemma } = engine;
  await Gemma.load('/models/other/');
  engine.terminate();

  // @ts-expect-error tokenize crosses to the worker: it answers with a promise
  const sync: Uint32Array = gemma.tokenize('Hello');
  // @ts-expect-error a replacement fetch cannot cross the boundary
  await engine.load('/models/default/', { fetch: (u: string, i: RequestInit) => fetch(u, i) });
  // @ts-expect-error stats() answers with a promise
  const n: number = gemma.stats().decodeTokens;
  return `${webgpu}${text}${logits.length}${stats.decodeTokens}${lp}${completion.choices[0].message.content}${deleted}${report}${sync}${n}`;
}
