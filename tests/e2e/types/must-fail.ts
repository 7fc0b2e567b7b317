// Compiled by types.test.mjs, which expects exactly these errors: the types can reject.
import { Gemma } from 'gemma-webgpu';

export async function wrong(gemma: Gemma): Promise<void> {
  const completion = await gemma.chat.completions.create({ messages: [] });
  // A completion is not a chunk stream: 'choices[0].delta' does not exist on it.
  const delta: string | undefined = completion.choices[0].delta.content;
  void delta;
}
