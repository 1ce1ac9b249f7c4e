/**
 * Shapes of the JSON that the server extension's `/nbqueue/api/` handlers return.
 * Times are epoch seconds.
 */

export interface IQueue {
  name: string;
  counts: Record<string, number>;
}

export interface IQueuesResponse {
  queues: IQueue[];
  states: string[];
}

export interface IWorker {
  name: string;
  state: string;
  current_jobs: string[];
  queues: string[];
  hostname: string;
  pid: number | null;
  concurrency: number | null;
  birth: number | null;
  finished: number;
  failed: number;
  stopped: number;
  retried: number;
  last_heartbeat: number | null;
  heartbeat_age_s: number | null;
}

export interface IWorkersResponse {
  workers: IWorker[];
}

export interface IProgress {
  done: number;
  total: number | null;
  message: string | null;
}

export interface IJobSummary {
  id: string;
  status: string;
  queue: string;
  func: string;
  description: string;
  worker: string | null;
  tags: string[];
  enqueued_at: number | null;
  started_at: number | null;
  ended_at: number | null;
  progress: IProgress | null;
}

export interface IJobsResponse {
  jobs: IJobSummary[];
  offset: number;
  limit: number;
  has_more: boolean;
}

export interface IResult {
  id: string;
  type: string;
  created_at: number | null;
  started_at: number | null;
  ended_at: number | null;
  duration_s: number | null;
  worker: string;
  exc_string: string | null;
  return_value: string | null;
  return_value_error: string | null;
}

export interface IOutputEntry {
  kind: 'stream' | 'display';
  name?: string;
  text?: string;
  data?: Record<string, string>;
}

export interface IJobDetail extends IJobSummary {
  created_at: number | null;
  timeout: number | null;
  result_ttl: number | null;
  failure_ttl: number | null;
  ttl: number | null;
  retries_left: number | null;
  meta: Record<string, string> | string | null;
  results: IResult[];
  traceback: string | null;
  output: IOutputEntry[];
  output_omitted: number;
  provenance: unknown;
}

export interface IJobResponse {
  job: IJobDetail;
}

export interface IActionResponse {
  id: string;
  action: string;
  status: string | null;
}

/** Filters and page of the jobs table. */
export interface IJobFilter {
  queue: string;
  status: string;
  tag: string;
  offset: number;
  limit: number;
}

/** Actions on one job, named as the server's action URLs and the `Job` methods. */
export type JobAction = 'stop' | 'cancel' | 'requeue' | 'delete';

/** Job states, as stored in a job's `status` field. */
export const JOB_STATUSES = ['queued', 'started', 'scheduled', 'finished', 'failed', 'stopped', 'canceled'];
