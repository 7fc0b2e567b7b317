// OpenAI-style chat completions on a loaded Gemma: `gemma.chat.completions.create(request)`
// returns OpenAI's shapes (a `chat.completion`, or with `stream: true` an async iterable of
// `chat.completion.chunk`s) on top of `gemma.chat`, so code written for the `openai` package
// runs unchanged against the local model. `gemma.chat` stays callable as before.

const cache = new WeakMap();
let installed = false;

// Make `chat` on every Gemma a function that also has `.completions.create`.
export function installChat(instance) {
  if (installed) return;
  const proto = Object.getPrototypeOf(instance);
  const original = proto.chat;
  if (typeof original !== 'function') return;
  installed = true;
  Object.defineProperty(proto, 'chat', {
    configurable: true,
    get() {
      let f = cache.get(this);
      if (!f) {
        const model = this;
        f = (messages, options) => original.call(model, messages, options);
        f.completions = { create: (request, requestOptions) => create(model, original, request, requestOptions) };
        cache.set(this, f);
      }
      return f;
    },
  });
}

function invalid(message) {
  const e = new Error(message);
  e.name = 'InvalidArgumentError';
  return e;
}

// Request fields we read; any other is refused by name (silently ignoring `tools` or `n` would
// give an answer the caller did not ask for).
const KNOWN = new Set([
  'messages', 'model', 'stream', 'stream_options', 'max_tokens', 'max_completion_tokens', 'temperature', 'top_p',
  'top_k', 'seed', 'stop', 'logit_bias', 'frequency_penalty', 'presence_penalty', 'repetition_penalty', 'logprobs',
  'top_logprobs', 'n', 'user', 'store', 'metadata', 'response_format', 'tools', 'tool_choice', 'functions',
  'function_call', 'parallel_tool_calls', 'modalities', 'audio', 'prediction', 'reasoning_effort', 'service_tier',
  'web_search_options',
]);

function options(request, signal) {
  if (!request || typeof request !== 'object') throw invalid(`chat.completions.create: the request must be an object, got ${request}`);
  for (const key of Object.keys(request)) {
    if (!KNOWN.has(key)) throw invalid(`chat.completions.create: '${key}' is not a chat completion field this engine knows`);
  }
  const refuse = (field, why) => { throw invalid(`chat.completions.create: ${field} ${why}`); };
  if (request.n != null && request.n !== 1) refuse('n', `must be 1 (one choice per request), got ${request.n}`);
  for (const f of ['functions', 'function_call', 'audio', 'prediction', 'web_search_options']) {
    if (request[f] != null) refuse(f, 'is not supported by this engine');
  }
  if (request.modalities != null && !(Array.isArray(request.modalities) && request.modalities.every((m) => m === 'text'))) {
    refuse('modalities', "must be ['text']");
  }
  const format = request.response_format;
  const FORMATS = ['text', 'json_object', 'json_schema', 'grammar', 'regex'];
  if (format != null && !(format && FORMATS.includes(format.type))) {
    refuse('response_format', `type '${format && format.type}' is not supported (${FORMATS.join(', ')})`);
  }
  const tools = toolsOf(request, refuse);
  if (tools && format != null && format.type !== 'text') refuse('response_format', 'cannot be combined with tools');
  if (!Array.isArray(request.messages)) refuse('messages', 'must be an array of { role, content }');
  const messages = request.messages.map((m, i) => {
    if (!m || typeof m !== 'object') refuse('messages', `entry ${i} is not an object`);
    // A tool's result, and an assistant turn that called tools, as Gemma reads them (it has
    // no tool role): the result as a user turn, the call as the JSON the model wrote.
    if (m.role === 'tool') {
      const text = Array.isArray(m.content) ? m.content.map((p) => (p && p.text) || '').join('') : m.content;
      if (typeof text !== 'string') refuse('messages', `entry ${i} (a tool result) needs string content`);
      return { role: 'user', content: `Result of the call ${m.tool_call_id ?? ''}:\n${text}` };
    }
    if (m.role === 'assistant' && Array.isArray(m.tool_calls) && m.tool_calls.length) {
      const calls = m.tool_calls.map((c) => {
        let args = c && c.function && c.function.arguments;
        try { args = JSON.parse(args); } catch (e) { /* kept as the string it is */ }
        return JSON.stringify({ name: c && c.function && c.function.name, arguments: args });
      });
      return { role: 'assistant', content: calls.join('\n') };
    }
    let content = m.content;
    if (Array.isArray(content)) {
      content = content.map((part) => {
        if (part && part.type === 'text' && typeof part.text === 'string') return part.text;
        return refuse('messages', `entry ${i} has a content part of type '${part && part.type}' (only text)`);
      }).join('');
    }
    const role = m.role === 'developer' ? 'system' : m.role;
    if (typeof content !== 'string') refuse('messages', `entry ${i} needs string content`);
    return { role, content };
  });
  const o = { topK: request.top_k ?? 0, temperature: request.temperature ?? 1, topP: request.top_p ?? 1 };
  const maxTokens = request.max_completion_tokens ?? request.max_tokens;
  if (maxTokens != null) o.maxTokens = maxTokens;
  if (request.seed != null) o.seed = request.seed;
  if (request.stop != null) o.stop = request.stop;
  if (request.frequency_penalty != null) o.frequencyPenalty = request.frequency_penalty;
  if (request.presence_penalty != null) o.presencePenalty = request.presence_penalty;
  if (request.repetition_penalty != null) o.repetitionPenalty = request.repetition_penalty;
  if (request.logit_bias != null) o.logitBias = request.logit_bias;
  if (request.top_logprobs != null && !request.logprobs) refuse('top_logprobs', 'needs logprobs: true');
  if (request.logprobs) o.topLogprobs = request.top_logprobs ?? 0;
  if (format != null && format.type !== 'text') o.responseFormat = format;
  if (signal) o.signal = signal;
  if (tools) {
    // The tools go in front of the first user turn (where a system message goes); a call the
    // caller requires is constrained to the tools' schemas.
    const first = messages.findIndex((m) => m.role === 'user');
    const note = { role: 'system', content: toolPrompt(tools.list) };
    if (first < 0) messages.unshift(note);
    else messages.splice(first, 0, note);
    if (tools.required) o.responseFormat = { type: 'json_schema', json_schema: { name: 'tool_call', schema: callSchema(tools.required) } };
  }
  return { messages, o, tools };
}

// `tools` and `tool_choice`: the function tools, and which the reply must call (`required`:
// one of them; a named one: that one; `auto`: the model decides, its reply read as a call when
// it is one; `none`: never a call).
function toolsOf(request, refuse) {
  const list = request.tools;
  const choice = request.tool_choice ?? 'auto';
  if (list == null || (Array.isArray(list) && list.length === 0)) {
    if (request.tool_choice != null && request.tool_choice !== 'none') refuse('tool_choice', 'needs tools');
    return null;
  }
  if (!Array.isArray(list)) refuse('tools', 'must be an array of { type: "function", function: { name, parameters } }');
  const fns = list.map((t, i) => {
    if (!t || t.type !== 'function' || !t.function || typeof t.function.name !== 'string' || !t.function.name) {
      refuse('tools', `entry ${i} must be { type: 'function', function: { name, description?, parameters? } }`);
    }
    const params = t.function.parameters ?? { type: 'object', properties: {} };
    if (typeof params !== 'object' || Array.isArray(params)) refuse('tools', `entry ${i}'s parameters must be a JSON schema object`);
    return { name: t.function.name, description: t.function.description ?? '', parameters: params };
  });
  let required = null;
  if (choice === 'required') required = fns;
  else if (choice && typeof choice === 'object') {
    const name = choice.function && choice.function.name;
    const f = fns.find((x) => x.name === name);
    if (choice.type !== 'function' || !f) refuse('tool_choice', `names no tool of the request (${JSON.stringify(choice)})`);
    required = [f];
  } else if (choice !== 'auto' && choice !== 'none') {
    refuse('tool_choice', `must be 'auto', 'none', 'required' or { type: 'function', function: { name } }, got ${JSON.stringify(choice)}`);
  }
  return { list: fns, required, none: choice === 'none' };
}

function toolPrompt(fns) {
  return 'You can call these functions. To call one, reply with only a JSON object ' +
    '{"name": <the function\'s name>, "arguments": <an object of its parameters>} and nothing else; ' +
    'otherwise reply normally.\n\n' +
    fns.map((f) => JSON.stringify({ name: f.name, description: f.description, parameters: f.parameters })).join('\n');
}

// A call of one of `fns`: { name, arguments } with the function's own parameters.
function callSchema(fns) {
  const one = (f) => ({
    type: 'object',
    properties: { name: { const: f.name }, arguments: f.parameters },
    required: ['name', 'arguments'],
    additionalProperties: false,
  });
  return fns.length === 1 ? one(fns[0]) : { anyOf: fns.map(one) };
}

// The reply as tool calls, where it is one (a JSON object naming a tool of the request).
function callsIn(text, tools) {
  if (!tools || tools.none) return null;
  let v;
  try { v = JSON.parse(text.trim()); } catch (e) { return null; }
  const one = (c) => c && typeof c === 'object' && typeof c.name === 'string' && tools.list.some((f) => f.name === c.name);
  const calls = Array.isArray(v) ? v : [v];
  if (!calls.length || !calls.every(one)) return null;
  return calls.map((c, i) => ({
    id: 'call_' + id().slice(9, 33) + i,
    type: 'function',
    function: { name: c.name, arguments: JSON.stringify(c.arguments ?? {}) },
  }));
}

function finishReason(stats) {
  return stats.finishReason === 'length' || stats.finishReason === 'context' ? 'length' : 'stop';
}

function usage(stats) {
  return {
    prompt_tokens: stats.promptTokens,
    completion_tokens: stats.decodeTokens,
    total_tokens: stats.promptTokens + stats.decodeTokens,
    prompt_tokens_details: { cached_tokens: stats.reusedTokens },
    // Not OpenAI's: where the time went.
    gemma_webgpu: {
      time_to_first_token_s: stats.prefillSeconds,
      prefill_tokens: stats.prefillTokens,
      prefill_tokens_per_second: stats.prefillTokensPerSecond,
      decode_seconds: stats.decodeSeconds,
      decode_tokens_per_second: stats.decodeTokensPerSecond,
    },
  };
}

function id() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return 'chatcmpl-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function modelName(request) {
  return request.model || 'gemma-webgpu';
}

function logprobsOf(model, start) {
  return { content: model.logprobs(start), refusal: null };
}

async function create(model, chat, request, requestOptions) {
  const { messages, o, tools } = options(request, requestOptions && requestOptions.signal);
  const created = Math.floor(Date.now() / 1000);
  const name = modelName(request);
  if (!request.stream || tools) {
    if (!request.stream && request.stream_options != null) throw invalid('chat.completions.create: stream_options needs stream: true');
    const text = await chat.call(model, messages, o);
    const stats = model.stats();
    const calls = callsIn(text, tools);
    if (request.stream) return replay(text, calls, stats, request, created, name, model);
    if (calls) {
      return {
        id: id(),
        object: 'chat.completion',
        created,
        model: name,
        choices: [{ index: 0, message: { role: 'assistant', content: null, refusal: null, tool_calls: calls }, logprobs: null, finish_reason: 'tool_calls' }],
        usage: usage(stats),
      };
    }
    return {
      id: id(),
      object: 'chat.completion',
      created,
      model: name,
      choices: [{
        index: 0,
        message: { role: 'assistant', content: text, refusal: null },
        logprobs: request.logprobs ? logprobsOf(model, 0) : null,
        finish_reason: finishReason(stats),
      }],
      usage: usage(stats),
    };
  }
  return stream(model, chat, messages, o, request, created, name);
}

// A streamed reply with tools, generated whole first (a call is only known to be one at its
// end): the role, then the text or the calls in one chunk with the finish reason, then the
// usage when asked.
function replay(text, calls, stats, request, created, name, model) {
  const chunkId = id();
  const withUsage = !!(request.stream_options && request.stream_options.include_usage);
  const chunk = (delta, finish, logprobs) => ({
    id: chunkId, object: 'chat.completion.chunk', created, model: name,
    choices: [{ index: 0, delta, logprobs: logprobs ?? null, finish_reason: finish }],
    ...(withUsage ? { usage: null } : {}),
  });
  const all = [chunk({ role: 'assistant', content: '' }, null)];
  if (calls) {
    all.push(chunk({ tool_calls: calls.map((c, index) => ({ index, ...c })) }, 'tool_calls'));
  } else {
    all.push(chunk({ content: text }, finishReason(stats), request.logprobs ? logprobsOf(model, 0) : null));
  }
  if (withUsage) all.push({ id: chunkId, object: 'chat.completion.chunk', created, model: name, choices: [], usage: usage(stats) });
  let i = 0;
  return {
    [Symbol.asyncIterator]() { return this; },
    async next() { return i < all.length ? { value: all[i++], done: false } : { value: undefined, done: true }; },
    async return(value) { i = all.length; return { value, done: true }; },
  };
}

// The chunks of one streamed completion: the assistant role first, then each piece of text as
// it comes, the finish reason on the last content chunk, and (stream_options.include_usage) a
// last chunk with no choices and the usage. Leaving the loop early aborts the generation.
function stream(model, chat, messages, o, request, created, name) {
  const withUsage = !!(request.stream_options && request.stream_options.include_usage);
  const chunkId = id();
  const controller = new AbortController();
  const user = o.signal;
  const onUserAbort = () => controller.abort(user.reason);
  const queue = [];
  let wake = null, started = false, finished = false, failure = null, closed = false;
  let held = null, tokensSent = 0, sentFinal = false;
  const notify = () => { if (wake) { const w = wake; wake = null; w(); } };
  const chunk = (delta, finish, logprobs) => ({
    id: chunkId,
    object: 'chat.completion.chunk',
    created,
    model: name,
    choices: [{ index: 0, delta, logprobs: logprobs ?? null, finish_reason: finish }],
    ...(withUsage ? { usage: null } : {}),
  });
  const start = () => {
    started = true;
    if (user) {
      if (user.aborted) controller.abort(user.reason);
      else user.addEventListener('abort', onUserAbort, { once: true });
    }
    chat.call(model, messages, {
      ...o,
      signal: controller.signal,
      onToken: (text) => {
        let lp;
        if (request.logprobs) {
          const content = model.logprobs(tokensSent);
          tokensSent += content.length;
          lp = { content, refusal: null };
        }
        queue.push(chunk({ content: text }, null, lp));
        notify();
      },
    }).then(() => { finished = true; notify(); }, (e) => { failure = e; finished = true; notify(); })
      .finally(() => { if (user) user.removeEventListener('abort', onUserAbort); });
  };
  const pending = [chunk({ role: 'assistant', content: '' }, null)];
  return {
    [Symbol.asyncIterator]() { return this; },
    async next() {
      if (!started) start();
      for (;;) {
        if (pending.length) return { value: pending.shift(), done: false };
        if (closed) return { value: undefined, done: true };
        // Hold one content chunk back: the last one carries the finish reason.
        if (queue.length) {
          const next = queue.shift();
          if (held) { const out = held; held = next; return { value: out, done: false }; }
          held = next;
          continue;
        }
        if (failure) { const e = failure; failure = null; closed = true; throw e; }
        if (finished && !sentFinal) {
          sentFinal = true;
          const stats = model.stats();
          const last = held || chunk({}, null);
          held = null;
          if (request.logprobs) {
            const rest = model.logprobs(tokensSent);
            if (rest.length) {
              const lp = last.choices[0].logprobs || { content: [], refusal: null };
              lp.content = lp.content.concat(rest);
              last.choices[0].logprobs = lp;
            }
          }
          last.choices[0].finish_reason = finishReason(stats);
          pending.push(last);
          if (withUsage) pending.push({ id: chunkId, object: 'chat.completion.chunk', created, model: name, choices: [], usage: usage(stats) });
          closed = true;
          continue;
        }
        await new Promise((resolve) => { wake = resolve; });
      }
    },
    async return(value) {
      closed = true;
      pending.length = 0;
      if (started && !finished) controller.abort();
      return { value, done: true };
    },
  };
}
