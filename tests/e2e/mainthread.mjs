// Times the page's main thread while a model loads, two ways:
//
// - in the page, a PerformanceObserver for 'longtask' entries (tasks over 50 ms, wall clock) and
//   a 4 ms heartbeat (the longest gap between two beats bounds the longest task): what a web
//   developer would measure;
// - from a Chromium trace of the same span (CDP Tracing, category 'toplevel'): every task the
//   renderer's main thread ran, with its wall time and its CPU time (`tdur`).
//
// On a small machine whose cores SwiftShader (the GPU, emulated on the CPU by Chromium's GPU
// process at a higher priority than the page) keeps busy, a task can wait for a core in the
// middle: its wall time then says the machine was busy, not that the page blocked. The verdict
// is therefore: no long task at all, or every task under 50 ms of the main thread's CPU time
// (then the long tasks are reported as the scheduler's). A page that computes for 50 ms or
// more fails either way.
//
//   const probe = await startMainThreadProbe(page);   // before the load starts
//   ...load...
//   const r = await probe.stop();  // { longTasks, longestLongTask, maxGap, maxTaskMs, maxTaskCpuMs, tasks, ok, summary }

export const LIMIT_MS = 50;

/** Starts both measurements; `stop()` ends them and returns the verdict. */
export async function startMainThreadProbe(page) {
  const cdp = await page.context().newCDPSession(page);
  const events = [];
  cdp.on('Tracing.dataCollected', ({ value }) => events.push(...value));
  await cdp.send('Tracing.start', {
    traceConfig: { includedCategories: ['toplevel', '__metadata'], recordMode: 'recordContinuously' },
    transferMode: 'ReportEvents',
  });
  await page.evaluate(() => {
    const probe = (window.__mainThreadProbe = { longTasks: [], maxGap: 0, beating: true });
    probe.observer = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) probe.longTasks.push(Math.round(e.duration));
    });
    probe.observer.observe({ type: 'longtask' });
    let last = performance.now();
    const beat = () => {
      const now = performance.now();
      probe.maxGap = Math.max(probe.maxGap, now - last);
      last = now;
      if (probe.beating) setTimeout(beat, 4);
    };
    setTimeout(beat, 4);
  });
  return {
    async stop() {
      const page_ = await page.evaluate(async () => {
        await new Promise((r) => setTimeout(r, 50)); // let the observer deliver
        const probe = window.__mainThreadProbe;
        probe.beating = false;
        probe.observer.disconnect();
        return { longTasks: probe.longTasks, maxGap: probe.maxGap };
      });
      const done = new Promise((resolve) => cdp.once('Tracing.tracingComplete', resolve));
      await cdp.send('Tracing.end');
      await done;
      await cdp.detach().catch(() => {});
      // The renderers' main threads, and the tasks they ran (durations in µs).
      const mains = new Set(
        events.filter((e) => e.ph === 'M' && e.name === 'thread_name' && e.args?.name === 'CrRendererMain').map((e) => `${e.pid}:${e.tid}`),
      );
      const tasks = events.filter(
        (e) => e.ph === 'X' && /RunTask$/.test(e.name) && mains.has(`${e.pid}:${e.tid}`) && typeof e.dur === 'number',
      );
      const maxTaskMs = Math.max(0, ...tasks.map((e) => e.dur / 1000));
      const maxTaskCpuMs = Math.max(0, ...tasks.map((e) => (e.tdur ?? e.dur) / 1000));
      const longestLongTask = Math.max(0, ...page_.longTasks);
      const ok = page_.longTasks.length === 0 || maxTaskCpuMs < LIMIT_MS;
      const summary =
        `long tasks: ${page_.longTasks.length ? `${page_.longTasks.join(', ')} ms` : 'none'}; ` +
        `longest heartbeat gap ${page_.maxGap.toFixed(0)} ms; ` +
        `trace: ${tasks.length} main-thread tasks, the longest ${maxTaskMs.toFixed(1)} ms wall, ` +
        `${maxTaskCpuMs.toFixed(1)} ms CPU` +
        (page_.longTasks.length && ok ? ' (the long tasks waited for a busy CPU: none computed for 50 ms)' : '');
      return { ...page_, longestLongTask, maxTaskMs, maxTaskCpuMs, tasks: tasks.length, ok, summary };
    },
  };
}
