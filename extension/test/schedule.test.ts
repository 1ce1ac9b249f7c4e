import { BACKOFF_FACTOR, RefreshSchedule } from '../src/schedule';

/** Let pending promise callbacks run. */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) {
    await Promise.resolve();
  }
}

describe('RefreshSchedule', () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => jest.useRealTimers());

  it('refreshes at the base interval while data changes', async () => {
    const refresh = jest.fn().mockResolvedValue(true);
    const schedule = new RefreshSchedule({ baseMs: 2000, maxMs: 30000, refresh });
    schedule.start();
    await settle();
    expect(refresh).toHaveBeenCalledTimes(1);

    jest.advanceTimersByTime(1999);
    await settle();
    expect(refresh).toHaveBeenCalledTimes(1);
    jest.advanceTimersByTime(1);
    await settle();
    expect(refresh).toHaveBeenCalledTimes(2);
    expect(schedule.intervalMs).toBe(2000);
    schedule.dispose();
  });

  it('backs off while nothing changes, up to the maximum', async () => {
    const refresh = jest.fn().mockResolvedValue(false);
    const schedule = new RefreshSchedule({ baseMs: 2000, maxMs: 5000, refresh });
    schedule.start();
    await settle();
    expect(schedule.intervalMs).toBe(2000 * BACKOFF_FACTOR);

    jest.advanceTimersByTime(3000);
    await settle();
    expect(refresh).toHaveBeenCalledTimes(2);
    expect(schedule.intervalMs).toBe(4500);

    jest.advanceTimersByTime(4500);
    await settle();
    expect(schedule.intervalMs).toBe(5000);
    schedule.dispose();
  });

  it('backs off after a failed request', async () => {
    const refresh = jest.fn().mockRejectedValue(new Error('503'));
    const schedule = new RefreshSchedule({ baseMs: 1000, maxMs: 10000, refresh });
    schedule.start();
    await settle();
    expect(schedule.intervalMs).toBe(1500);
    expect(schedule.running).toBe(true);
    schedule.dispose();
  });

  it('resets to the base interval when data changes again', async () => {
    let changed = false;
    const refresh = jest.fn(() => Promise.resolve(changed));
    const schedule = new RefreshSchedule({ baseMs: 1000, maxMs: 10000, refresh });
    schedule.start();
    await settle();
    expect(schedule.intervalMs).toBe(1500);

    changed = true;
    jest.advanceTimersByTime(1500);
    await settle();
    expect(schedule.intervalMs).toBe(1000);
    schedule.dispose();
  });

  it('stops refreshing while stopped (panel hidden)', async () => {
    const refresh = jest.fn().mockResolvedValue(true);
    const schedule = new RefreshSchedule({ baseMs: 1000, maxMs: 10000, refresh });
    schedule.start();
    await settle();
    schedule.stop();
    jest.advanceTimersByTime(60000);
    await settle();
    expect(refresh).toHaveBeenCalledTimes(1);
    expect(schedule.running).toBe(false);
  });

  it('shares one request between concurrent refreshNow calls', async () => {
    let resolve: (changed: boolean) => void = () => undefined;
    const refresh = jest.fn(() => new Promise<boolean>(done => (resolve = done)));
    const schedule = new RefreshSchedule({ baseMs: 1000, maxMs: 10000, refresh });
    const first = schedule.refreshNow();
    const second = schedule.refreshNow();
    resolve(true);
    await Promise.all([first, second]);
    expect(refresh).toHaveBeenCalledTimes(1);
    schedule.dispose();
  });

  it('uses a new base interval after configure', async () => {
    const refresh = jest.fn().mockResolvedValue(true);
    const schedule = new RefreshSchedule({ baseMs: 2000, maxMs: 30000, refresh });
    schedule.start();
    await settle();
    schedule.configure(500, 30000);
    jest.advanceTimersByTime(500);
    await settle();
    expect(refresh).toHaveBeenCalledTimes(2);
    schedule.dispose();
  });
});
