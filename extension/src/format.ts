/**
 * Text shown for times, durations and jobs in the panel.
 */

/** Format a number of seconds as `850 ms`, `4.2 s`, `3 min 5 s` or `2 h 10 min`. */
export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) {
    return '';
  }
  if (seconds < 1) {
    return `${Math.round(seconds * 1000)} ms`;
  }
  if (seconds < 60) {
    return `${seconds.toFixed(1)} s`;
  }
  const whole = Math.round(seconds);
  if (whole < 3600) {
    return `${Math.floor(whole / 60)} min ${whole % 60} s`;
  }
  return `${Math.floor(whole / 3600)} h ${Math.floor((whole % 3600) / 60)} min`;
}

/** Format the time since `epochS` (epoch seconds) as `12 s ago`; `nowMs` is the current time in ms. */
export function formatAge(epochS: number | null | undefined, nowMs: number = Date.now()): string {
  if (epochS === null || epochS === undefined) {
    return '';
  }
  const ageS = Math.max(0, nowMs / 1000 - epochS);
  if (ageS < 60) {
    return `${Math.floor(ageS)} s ago`;
  }
  return `${formatDuration(ageS).replace(/ \d+ s$/, '')} ago`;
}

/** Format epoch seconds as the local time of day, with the date unless it is today; '' when unknown. */
export function formatTime(epochS: number | null | undefined, nowMs: number = Date.now()): string {
  if (epochS === null || epochS === undefined) {
    return '';
  }
  const date = new Date(epochS * 1000);
  if (date.toDateString() === new Date(nowMs).toDateString()) {
    return date.toLocaleTimeString();
  }
  return date.toLocaleString();
}

/** Format a job's progress as `3 / 10 · loading`, or '' when the job reported none. */
export function formatProgress(progress: { done: number; total: number | null; message: string | null } | null): string {
  if (!progress) {
    return '';
  }
  const count = progress.total !== null ? `${progress.done} / ${progress.total}` : `${progress.done}`;
  return progress.message ? `${count} · ${progress.message}` : count;
}

/** Return the run time of a job: from its start to its end, or to now while it runs. */
export function runTime(
  job: { status: string; started_at: number | null; ended_at: number | null },
  nowMs: number = Date.now()
): number | null {
  if (job.started_at === null) {
    return null;
  }
  if (job.status === 'started') {
    return Math.max(0, nowMs / 1000 - job.started_at);
  }
  return job.ended_at !== null ? Math.max(0, job.ended_at - job.started_at) : null;
}

/** List the actions that fit a job in `status`, in the order of the buttons. */
export function allowedActions(status: string): Array<'stop' | 'cancel' | 'requeue' | 'delete'> {
  const actions: Array<'stop' | 'cancel' | 'requeue' | 'delete'> = [];
  if (status === 'started') {
    actions.push('stop');
  }
  if (status === 'queued' || status === 'scheduled') {
    actions.push('cancel');
  }
  if (status === 'failed' || status === 'stopped' || status === 'canceled') {
    actions.push('requeue');
  }
  actions.push('delete');
  return actions;
}

/**
 * Return a string that changes when shown data changes, ignoring heartbeat times, which change on every
 * read and would keep the refresh from backing off.
 */
export function dataSignature(data: unknown): string {
  return JSON.stringify(data, (key, value) =>
    key === 'heartbeat_age_s' || key === 'last_heartbeat' ? undefined : value
  );
}
