// Types of gemma-webgpu/client: the engine in a module Web Worker, with the main-thread API.

import type { CachedModel, Gemma, LoadOptions } from './gemma_webgpu.js';

/** `F` with its result as a promise (results that are promises or async iterators stay so). */
type Async<F> = F extends (...args: infer A) => infer R
  ? (...args: A) => R extends PromiseLike<unknown> | AsyncIterable<unknown> ? R : Promise<R>
  : never;

/**
 * An engine object across the worker boundary: every method of `T`, taking the same arguments
 * (callbacks and an AbortSignal in the options included) and resolving to the same value;
 * members of methods (`chat.completions.create`) are kept. Methods whose every overload already
 * returns a promise or an async iterator keep their types (overloads included).
 */
export type Remote<T> = {
  [K in keyof T as K extends 'free' | symbol ? never : T[K] extends object ? K : never]: T[K] extends (
    ...args: any[]
  ) => PromiseLike<unknown> | AsyncIterable<unknown>
    ? T[K] & Remote<T[K]>
    : T[K] extends (...args: any[]) => unknown
      ? Async<T[K]> & Remote<T[K]>
      : Remote<T[K]>;
};

/** A model loaded in the worker: the methods of `Gemma`, each answering with a promise. */
export type WorkerGemma = Remote<Gemma> & {
  /** The worker forgets its object (after `dispose()`, which frees the GPU memory). */
  free(): Promise<void>;
};
export declare const WorkerGemma: {
  readonly prototype: WorkerGemma;
};

/** Load options across the worker boundary: all of `LoadOptions` but a replacement `fetch`. */
export type WorkerLoadOptions = Omit<LoadOptions, 'fetch'>;

export interface WorkerGemmaOptions {
  /** A Worker running `gemma-webgpu/worker`, or its URL (default: `worker.js` next to this
   *  module, which bundlers that follow `new Worker(new URL(…, import.meta.url))` emit). */
  worker?: Worker | string | URL;
  /** The `.wasm`'s URL, where a bundler put it elsewhere (default: next to `gemma_webgpu.js`). */
  wasm?: string | URL;
  /** Errors of the worker that no call awaits (an uncaught error inside it). */
  onError?: (error: Error) => void;
}

export interface WorkerGemmaStatics {
  /** As `Gemma.load`; `onProgress` is called on this thread, `signal` aborts in the worker. */
  load(modelUrl: string, options?: WorkerLoadOptions): Promise<WorkerGemma>;
  listCachedModels(): Promise<CachedModel[]>;
  deleteCachedModel(key: string): Promise<boolean>;
}

export interface WorkerGemmaEngine extends WorkerGemmaStatics {
  readonly worker: Worker;
  /** Resolves when the worker runs (`webgpu`: whether it sees `navigator.gpu`); rejects with
   *  `WorkerError` when it failed to start. Calls need not wait for it. */
  readonly ready: Promise<{ webgpu: boolean; protocol: number }>;
  /** The same statics under the class's name: `const { Gemma } = createWorkerGemma()`. */
  readonly Gemma: WorkerGemmaStatics;
  adapterReport(): Promise<string>;
  kernelSelfTest(): Promise<string>;
  /** Any function the package exports, by path: `call('adapterReport')`, `call(['Gemma', 'load'], url)`. */
  call(path: string | string[], ...args: unknown[]): Promise<any>;
  /** Stop the worker; calls in flight and later ones reject with `DisposedError`. */
  terminate(): void;
}

/** Start the engine in a module worker and return its client. */
export function createWorkerGemma(options?: WorkerGemmaOptions): WorkerGemmaEngine;
