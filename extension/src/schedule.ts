/**
 * When the panel reads the server next: every `baseMs` while data changes, backing off geometrically
 * up to `maxMs` while nothing changes or requests fail, and not at all while the panel is hidden.
 */

/** Factor by which the interval grows after a refresh that changed nothing or failed. */
export const BACKOFF_FACTOR = 1.5;

export interface IScheduleOptions {
  /** Interval while data changes, in milliseconds. */
  baseMs: number;
  /** Maximum interval, in milliseconds. */
  maxMs: number;
  /** Reads the server; resolves to true when anything shown changed, rejects when the request failed. */
  refresh: () => Promise<boolean>;
}

export class RefreshSchedule {
  constructor(options: IScheduleOptions) {
    this._baseMs = options.baseMs;
    this._maxMs = Math.max(options.maxMs, options.baseMs);
    this._refresh = options.refresh;
    this._intervalMs = this._baseMs;
  }

  /** Milliseconds until the next refresh after the current one. */
  get intervalMs(): number {
    return this._intervalMs;
  }

  /** Whether refreshes are scheduled (the panel is visible). */
  get running(): boolean {
    return this._running;
  }

  /** Change the intervals; the next refresh uses the new base interval. */
  configure(baseMs: number, maxMs: number): void {
    this._baseMs = baseMs;
    this._maxMs = Math.max(maxMs, baseMs);
    this._intervalMs = baseMs;
    if (this._running) {
      this._arm();
    }
  }

  /** Start refreshing now, at the base interval. */
  start(): void {
    this._running = true;
    void this.refreshNow();
  }

  /** Stop refreshing until the next `start` or `refreshNow`. */
  stop(): void {
    this._running = false;
    this._clear();
  }

  /**
   * Refresh at once and reset the interval to the base, as after a user action. Concurrent calls share
   * one request.
   */
  refreshNow(): Promise<void> {
    this._intervalMs = this._baseMs;
    return this._tick();
  }

  dispose(): void {
    this.stop();
  }

  private _tick(): Promise<void> {
    this._clear();
    if (this._inFlight) {
      return this._inFlight;
    }
    this._inFlight = this._refresh()
      .then(
        changed => {
          this._intervalMs = changed ? this._baseMs : this._grow();
        },
        () => {
          this._intervalMs = this._grow();
        }
      )
      .finally(() => {
        this._inFlight = null;
        if (this._running) {
          this._arm();
        }
      });
    return this._inFlight;
  }

  private _grow(): number {
    return Math.min(this._maxMs, Math.round(this._intervalMs * BACKOFF_FACTOR));
  }

  private _arm(): void {
    this._clear();
    this._timer = setTimeout(() => void this._tick(), this._intervalMs);
  }

  private _clear(): void {
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
  }

  private _baseMs: number;
  private _maxMs: number;
  private _intervalMs: number;
  private _refresh: () => Promise<boolean>;
  private _running = false;
  private _timer: ReturnType<typeof setTimeout> | null = null;
  private _inFlight: Promise<void> | null = null;
}
