/**
 * Paths of the server extension's REST API, relative to `<base url>/nbqueue/api/`.
 */
import { IJobFilter, JobAction } from './types';

/** Return the path of one job. Job ids may contain any character, `/` included, so the id is percent-encoded. */
export function jobPath(jobId: string): string {
  return `jobs/${encodeURIComponent(jobId)}`;
}

/** Return the path that runs `action` on a job with POST. */
export function jobActionPath(jobId: string, action: JobAction): string {
  return `${jobPath(jobId)}/${action}`;
}

/** Return the path of a page of jobs, with only the filters that are set. */
export function jobsPath(filter: IJobFilter): string {
  const query = new URLSearchParams();
  if (filter.queue) {
    query.set('queue', filter.queue);
  }
  if (filter.status) {
    query.set('status', filter.status);
  }
  if (filter.tag) {
    query.set('tag', filter.tag);
  }
  query.set('offset', String(filter.offset));
  query.set('limit', String(filter.limit));
  return `jobs?${query.toString()}`;
}
