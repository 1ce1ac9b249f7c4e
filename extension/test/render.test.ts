import { renderJobDetail, renderJobs, renderOutput, renderQueues, renderWorkers } from '../src/render';
import { IJobDetail, IJobSummary } from '../src/types';

const SUMMARY: IJobSummary = {
  id: 'job-1',
  status: 'failed',
  queue: 'default',
  func: 'tasks.add',
  description: '<img src=x onerror=alert(1)>',
  worker: 'w1',
  tags: ['nb.ipynb'],
  enqueued_at: 100,
  started_at: 101,
  ended_at: 103,
  progress: { done: 2, total: 4, message: 'half' }
};

const DETAIL: IJobDetail = {
  ...SUMMARY,
  created_at: 100,
  timeout: 180,
  result_ttl: 500,
  failure_ttl: 31536000,
  ttl: null,
  retries_left: 0,
  meta: { owner: "'me'" },
  results: [
    {
      id: '2-0',
      type: 'FAILED',
      created_at: 103,
      started_at: 101,
      ended_at: 103,
      duration_s: 2,
      worker: 'w1',
      exc_string: 'Traceback (most recent call last):\nValueError: bad input',
      return_value: null,
      return_value_error: null
    },
    {
      id: '1-0',
      type: 'SUCCESSFUL',
      created_at: 90,
      started_at: 89,
      ended_at: 90,
      duration_s: 1,
      worker: 'w1',
      exc_string: null,
      return_value: '42',
      return_value_error: null
    }
  ],
  traceback: 'Traceback (most recent call last):\nValueError: bad input',
  output: [
    { kind: 'stream', name: 'stdout', text: 'step 1\n' },
    { kind: 'stream', name: 'stderr', text: 'warning\n' },
    { kind: 'display', data: { 'text/plain': '<Figure>', 'image/png': 'iVBORw0KGgo=' } }
  ],
  output_omitted: 0,
  provenance: { notebook: 'nb.ipynb', cell_id: 'abc' }
};

describe('renderQueues', () => {
  it('shows one row per queue with a count per state', () => {
    const node = renderQueues([{ name: 'default', counts: { queued: 2, failed: 1 } }], ['queued', 'failed']);
    const cells = Array.from(node.querySelectorAll('tbody td')).map(cell => cell.textContent);
    expect(cells).toEqual(['default', '2', '1']);
  });

  it('says so when there are no queues', () => {
    expect(renderQueues([], ['queued']).textContent).toContain('No queues yet');
  });
});

describe('renderWorkers', () => {
  it('shows state, current job, jobs done and heartbeat age', () => {
    const node = renderWorkers([
      {
        name: 'w1', state: 'busy', current_jobs: ['job-1'], queues: ['default'], hostname: 'h', pid: 1,
        concurrency: 1, birth: 0, finished: 5, failed: 1, stopped: 0, retried: 0, last_heartbeat: 0,
        heartbeat_age_s: 2.7
      }
    ]);
    const text = node.querySelector('tbody tr')?.textContent ?? '';
    expect(text).toContain('busy');
    expect(text).toContain('job-1');
    expect(text).toContain('5 ok, 1 failed');
    expect(text).toContain('2 s ago');
  });
});

describe('renderJobs', () => {
  it('shows job text as text, never as markup', () => {
    const node = renderJobs([SUMMARY], () => undefined, 110_000);
    expect(node.querySelector('img')).toBeNull();
    expect(node.querySelector('.nbqueue-description')?.textContent).toBe(SUMMARY.description);
  });

  it('calls onSelect with the id of a clicked row', () => {
    const onSelect = jest.fn();
    const node = renderJobs([SUMMARY], onSelect);
    (node.querySelector('tr[data-job-id="job-1"]') as HTMLElement).click();
    expect(onSelect).toHaveBeenCalledWith('job-1');
  });

  it('marks each row with its status', () => {
    const node = renderJobs([SUMMARY], () => undefined);
    expect(node.querySelector('.nbqueue-status-failed')?.textContent).toBe('failed');
  });
});

describe('renderJobDetail', () => {
  it('lists the result history newest first, with values and errors', () => {
    const node = renderJobDetail(DETAIL, () => undefined);
    const rows = Array.from(node.querySelectorAll('.nbqueue-result-row'));
    expect(rows).toHaveLength(2);
    expect(rows[0].textContent).toContain('ValueError: bad input');
    expect(rows[1].textContent).toContain('42');
  });

  it('shows the traceback, the output and the provenance', () => {
    const node = renderJobDetail(DETAIL, () => undefined);
    expect(node.querySelector('.nbqueue-traceback')?.textContent).toContain('ValueError');
    expect(node.querySelector('.nbqueue-stream-stdout')?.textContent).toBe('step 1\n');
    expect(node.querySelector('.nbqueue-stream-stderr')?.textContent).toBe('warning\n');
    expect(node.querySelector('img.nbqueue-image')?.getAttribute('src')).toBe('data:image/png;base64,iVBORw0KGgo=');
    expect(node.textContent).toContain('cell_id');
  });

  it('offers the actions of the job state and reports clicks', () => {
    const onAction = jest.fn();
    const node = renderJobDetail(DETAIL, onAction);
    const labels = Array.from(node.querySelectorAll('.nbqueue-action')).map(button => button.textContent);
    expect(labels).toEqual(['Requeue', 'Delete']);
    (node.querySelector('.nbqueue-action-requeue') as HTMLElement).click();
    expect(onAction).toHaveBeenCalledWith('requeue');
  });
});

describe('renderOutput', () => {
  it('says how many earlier entries were left out', () => {
    expect(renderOutput([], 3).textContent).toContain('3 earlier entries not shown');
  });
});
