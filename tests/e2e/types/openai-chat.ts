// Compiled (never run) by types.test.mjs: code written against the `openai` package's request
// and response types calls `gemma.chat.completions.create` unchanged.
import type OpenAI from 'openai';
import init, { Gemma } from 'gemma-webgpu';

type Params = OpenAI.Chat.Completions.ChatCompletionCreateParamsNonStreaming;
type StreamParams = OpenAI.Chat.Completions.ChatCompletionCreateParamsStreaming;

export async function main(): Promise<string> {
  await init();
  const gemma = await Gemma.load('/models/default/');
  const messages: OpenAI.Chat.Completions.ChatCompletionMessageParam[] = [
    { role: 'system', content: 'Be brief.' },
    { role: 'user', content: [{ type: 'text', text: 'Why is the sky blue?' }] },
  ];
  const request: Params = { model: 'gemma', messages, max_tokens: 32, temperature: 0.7, logprobs: true, top_logprobs: 2, logit_bias: { '42': -100 } };
  const completion: OpenAI.Chat.Completions.ChatCompletion = await gemma.chat.completions.create(request);
  const usage: OpenAI.CompletionUsage | undefined = completion.usage;
  const streamed: StreamParams = { model: 'gemma', messages, stream: true, stream_options: { include_usage: true } };
  const controller = new AbortController();
  let text = completion.choices[0].message.content ?? '';
  for await (const chunk of await gemma.chat.completions.create(streamed, { signal: controller.signal })) {
    const typed: OpenAI.Chat.Completions.ChatCompletionChunk = chunk;
    text += typed.choices[0]?.delta.content ?? '';
  }
  // The plain form still works.
  text += await gemma.chat([{ role: 'user', content: 'Hi' }], { maxTokens: 4, topLogprobs: 1, frequencyPenalty: 0.5 });
  const lp = gemma.logprobs(0)[0]?.top_logprobs[0]?.token ?? '';
  return `${text}${lp}${usage?.total_tokens ?? 0}`;
}
