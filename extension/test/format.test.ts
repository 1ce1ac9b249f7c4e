import {
  allowedActions,
  dataSignature,
  formatAge,
  formatDuration,
  formatProgress,
  runTime
} from '../src/format';
import { jobActionPath, jobPath, jobsPath } from '../src/routes';

describe('formatDuration', () => {
  it.each([
    [0.25, '250 ms'],
    [4.21, '4.2 s'],
    [185, '3 min 5 s'],
    [7800, '2 h 10 min']
  ])('formats %p seconds as %p', (seconds, text) => {
    expect(formatDuration(seconds)).toBe(text);
  });

  it('returns nothing for an unknown duration', () => {
    expect(formatDuration(null)).toBe('');
  });
});

describe('formatAge', () => {
  it('counts seconds, then minutes', () => {
    const nowMs = 1_000_000_000;
    expect(formatAge(nowMs / 1000 - 12, nowMs)).toBe('12 s ago');
    expect(formatAge(nowMs / 1000 - 185, nowMs)).toBe('3 min ago');
  });
});

describe('formatProgress', () => {
  it('shows done, total and message', () => {
    expect(formatProgress({ done: 3, total: 10, message: 'loading' })).toBe('3 / 10 · loading');
    expect(formatProgress({ done: 3, total: null, message: null })).toBe('3');
    expect(formatProgress(null)).toBe('');
  });
});

describe('runTime', () => {
  it('measures running and ended jobs', () => {
    expect(runTime({ status: 'started', started_at: 100, ended_at: null }, 105_000)).toBe(5);
    expect(runTime({ status: 'finished', started_at: 100, ended_at: 102.5 })).toBe(2.5);
    expect(runTime({ status: 'queued', started_at: null, ended_at: null })).toBeNull();
  });
});

describe('allowedActions', () => {
  it.each([
    ['started', ['stop', 'delete']],
    ['queued', ['cancel', 'delete']],
    ['scheduled', ['cancel', 'delete']],
    ['failed', ['requeue', 'delete']],
    ['stopped', ['requeue', 'delete']],
    ['canceled', ['requeue', 'delete']],
    ['finished', ['delete']]
  ])('offers the actions that fit a %s job', (status, actions) => {
    expect(allowedActions(status)).toEqual(actions);
  });
});

describe('dataSignature', () => {
  it('ignores heartbeat times, which change on every read', () => {
    const before = { workers: [{ name: 'w', heartbeat_age_s: 1, last_heartbeat: 10 }] };
    const after = { workers: [{ name: 'w', heartbeat_age_s: 3, last_heartbeat: 12 }] };
    expect(dataSignature(before)).toBe(dataSignature(after));
    expect(dataSignature(before)).not.toBe(dataSignature({ workers: [{ name: 'v' }] }));
  });
});

describe('routes', () => {
  it('percent-encodes job ids, slashes included', () => {
    expect(jobPath('a/b c')).toBe('jobs/a%2Fb%20c');
    expect(jobActionPath('a/b', 'stop')).toBe('jobs/a%2Fb/stop');
  });

  it('puts only the filters that are set in the jobs query', () => {
    expect(jobsPath({ queue: '', status: 'failed', tag: '', offset: 25, limit: 25 })).toBe(
      'jobs?status=failed&offset=25&limit=25'
    );
    expect(jobsPath({ queue: 'q&1', status: '', tag: 't', offset: 0, limit: 10 })).toBe(
      'jobs?queue=q%261&tag=t&offset=0&limit=10'
    );
  });
});
