/**
 * DOM for the panel's sections. Every value from the server is set as text (never as HTML), so job
 * descriptions, output and tracebacks cannot inject markup.
 */
import {
  allowedActions,
  formatAge,
  formatDuration,
  formatProgress,
  formatTime,
  runTime
} from './format';
import { IJobDetail, IJobSummary, IOutputEntry, IQueue, IWorker, JobAction } from './types';

/** Create an element with optional class names and text. */
export function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className = '',
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/** Return a status badge: `<span class="nbqueue-status nbqueue-status-finished">finished</span>`. */
export function statusBadge(status: string): HTMLSpanElement {
  return element('span', `nbqueue-status nbqueue-status-${status}`, status);
}

function table(headers: string[], rows: HTMLTableRowElement[], className: string): HTMLElement {
  // The wrapper scrolls sideways when the table is wider than the panel, so the panel itself does not.
  const wrapper = element('div', 'nbqueue-table-scroll');
  const node = element('table', `nbqueue-table ${className}`);
  wrapper.appendChild(node);
  const head = node.createTHead().insertRow();
  for (const header of headers) {
    head.appendChild(element('th', '', header));
  }
  const body = node.createTBody();
  for (const row of rows) {
    body.appendChild(row);
  }
  return wrapper;
}

function row(cells: Array<string | Node>, className = ''): HTMLTableRowElement {
  const node = element('tr', className);
  for (const cell of cells) {
    const td = element('td');
    if (typeof cell === 'string') {
      td.textContent = cell;
    } else {
      td.appendChild(cell);
    }
    node.appendChild(td);
  }
  return node;
}

/** Render the queues table: one row per queue, one column per state. */
export function renderQueues(queues: IQueue[], states: string[]): HTMLElement {
  if (queues.length === 0) {
    return element('p', 'nbqueue-empty', 'No queues yet: enqueue a job to create one.');
  }
  const rows = queues.map(queue => {
    const cells: Array<string | Node> = [element('code', '', queue.name)];
    for (const state of states) {
      cells.push(String(queue.counts[state] ?? 0));
    }
    const node = row(cells, 'nbqueue-queue-row');
    node.dataset.queue = queue.name;
    return node;
  });
  return table(['queue', ...states], rows, 'nbqueue-queues-table');
}

/** Render the workers table: state, current jobs, jobs done and heartbeat age. */
export function renderWorkers(workers: IWorker[]): HTMLElement {
  if (workers.length === 0) {
    return element('p', 'nbqueue-empty', 'No workers running: start one with `nbqueue worker`.');
  }
  const rows = workers.map(worker => {
    const done = worker.failed > 0 ? `${worker.finished} ok, ${worker.failed} failed` : `${worker.finished} ok`;
    const beat = worker.heartbeat_age_s !== null ? `${Math.floor(worker.heartbeat_age_s)} s ago` : '';
    const node = row(
      [element('code', '', worker.name), statusBadge(worker.state), worker.current_jobs.join(', '), done, beat],
      'nbqueue-worker-row'
    );
    node.dataset.worker = worker.name;
    return node;
  });
  return table(['worker', 'state', 'current job', 'jobs done', 'heartbeat'], rows, 'nbqueue-workers-table');
}

/**
 * Render the jobs table; clicking a row calls `onSelect` with the job's id. The table has few columns
 * so that it fits a sidebar: the id, call, run time and progress share one cell.
 */
export function renderJobs(
  jobs: IJobSummary[],
  onSelect: (jobId: string) => void,
  nowMs: number = Date.now()
): HTMLElement {
  if (jobs.length === 0) {
    return element('p', 'nbqueue-empty', 'No jobs match.');
  }
  const rows = jobs.map(job => {
    const summary = element('div', 'nbqueue-job-cell');
    summary.appendChild(element('code', 'nbqueue-job-id', job.id));
    const description = element('div', 'nbqueue-description', job.description);
    description.title = job.description;
    summary.appendChild(description);
    const details = [formatDuration(runTime(job, nowMs)), formatProgress(job.progress)].filter(text => text);
    if (details.length > 0) {
      summary.appendChild(element('div', 'nbqueue-job-progress', details.join(' · ')));
    }
    const node = row([statusBadge(job.status), summary, job.queue, formatAge(job.enqueued_at, nowMs)], 'nbqueue-job-row');
    node.dataset.jobId = job.id;
    node.tabIndex = 0;
    node.title = 'Show this job';
    node.addEventListener('click', () => onSelect(job.id));
    node.addEventListener('keydown', event => {
      if (event.key === 'Enter') {
        onSelect(job.id);
      }
    });
    return node;
  });
  return table(['status', 'job', 'queue', 'enqueued'], rows, 'nbqueue-jobs-table');
}

const ACTION_LABELS: Record<JobAction, string> = {
  stop: 'Stop',
  cancel: 'Cancel',
  requeue: 'Requeue',
  delete: 'Delete'
};

/** Render one job in full, with a button per action that its state allows. */
export function renderJobDetail(
  job: IJobDetail,
  onAction: (action: JobAction) => void,
  nowMs: number = Date.now()
): HTMLElement {
  const root = element('div', 'nbqueue-job-detail');
  root.dataset.jobId = job.id;

  const heading = element('div', 'nbqueue-detail-heading');
  heading.appendChild(statusBadge(job.status));
  heading.appendChild(element('code', 'nbqueue-job-id', job.id));
  root.appendChild(heading);

  const actions = element('div', 'nbqueue-actions');
  for (const action of allowedActions(job.status)) {
    const button = element('button', `jp-Button nbqueue-action nbqueue-action-${action}`, ACTION_LABELS[action]);
    button.type = 'button';
    button.addEventListener('click', () => onAction(action));
    actions.appendChild(button);
  }
  root.appendChild(actions);

  const fields: Array<[string, string]> = [
    ['call', job.description],
    ['queue', job.queue],
    ['worker', job.worker ?? ''],
    ['tags', job.tags.join(', ')],
    ['enqueued', formatTime(job.enqueued_at)],
    ['started', formatTime(job.started_at)],
    ['ended', formatTime(job.ended_at)],
    ['run time', formatDuration(runTime(job, nowMs))],
    ['progress', formatProgress(job.progress)],
    ['timeout', job.timeout === -1 ? 'none' : formatDuration(job.timeout)],
    ['retries left', job.retries_left !== null ? String(job.retries_left) : '']
  ];
  if (job.meta) {
    fields.push(['meta', typeof job.meta === 'string' ? job.meta : JSON.stringify(job.meta)]);
  }
  if (job.provenance !== null && job.provenance !== undefined) {
    fields.push(['provenance', typeof job.provenance === 'string' ? job.provenance : JSON.stringify(job.provenance)]);
  }
  const list = element('dl', 'nbqueue-fields');
  for (const [name, value] of fields) {
    if (value) {
      list.appendChild(element('dt', '', name));
      list.appendChild(element('dd', '', value));
    }
  }
  root.appendChild(list);

  root.appendChild(element('h4', '', 'Results'));
  root.appendChild(renderResults(job));

  if (job.traceback) {
    root.appendChild(element('h4', '', 'Traceback'));
    root.appendChild(element('pre', 'nbqueue-traceback', job.traceback));
  }

  root.appendChild(element('h4', '', 'Output'));
  root.appendChild(renderOutput(job.output, job.output_omitted));
  return root;
}

/** Render the result history, newest first, as one block per result so that it fits a sidebar. */
function renderResults(job: IJobDetail): HTMLElement {
  if (job.results.length === 0) {
    return element('p', 'nbqueue-empty', 'No result yet.');
  }
  const list = element('div', 'nbqueue-results');
  for (const result of job.results) {
    const block = element('div', 'nbqueue-result-row');
    const heading = element('div', 'nbqueue-result-heading');
    heading.appendChild(statusBadge(result.type.toLowerCase()));
    const facts = [formatTime(result.created_at), formatDuration(result.duration_s), result.worker];
    heading.appendChild(element('span', '', facts.filter(text => text).join(' · ')));
    block.appendChild(heading);

    let outcome = '';
    if (result.return_value !== null) {
      outcome = result.return_value;
    } else if (result.return_value_error) {
      outcome = `value not readable here: ${result.return_value_error}`;
    } else if (result.exc_string) {
      const lines = result.exc_string.trim().split('\n');
      outcome = lines[lines.length - 1];
    }
    if (outcome) {
      block.appendChild(element('code', 'nbqueue-outcome', outcome));
    }
    list.appendChild(block);
  }
  return list;
}

/** Render the job's output stream: text in order, stderr marked, images shown. */
export function renderOutput(entries: IOutputEntry[], omitted: number): HTMLElement {
  const root = element('div', 'nbqueue-output');
  if (omitted > 0) {
    root.appendChild(element('p', 'nbqueue-empty', `${omitted} earlier entries not shown.`));
  }
  if (entries.length === 0) {
    root.appendChild(element('p', 'nbqueue-empty', 'No output.'));
    return root;
  }
  for (const entry of entries) {
    if (entry.kind === 'stream') {
      root.appendChild(element('pre', `nbqueue-stream nbqueue-stream-${entry.name ?? 'stdout'}`, entry.text ?? ''));
      continue;
    }
    const data = entry.data ?? {};
    let image: string | null = null;
    if (data['image/png']) {
      image = 'image/png';
    } else if (data['image/jpeg']) {
      image = 'image/jpeg';
    }
    if (image) {
      const img = element('img', 'nbqueue-image');
      img.src = `data:${image};base64,${data[image]}`;
      img.alt = data['text/plain'] ?? 'image';
      root.appendChild(img);
    } else {
      root.appendChild(element('pre', 'nbqueue-stream nbqueue-display', data['text/plain'] ?? ''));
    }
  }
  return root;
}
