/**
 * Requests to the server extension's REST API under `<base url>/nbqueue/api/`.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** An error response from the API, with its HTTP status and the server's message. */
export class NbqueueApiError extends Error {
  constructor(
    readonly status: number,
    message: string
  ) {
    super(message);
    this.name = 'NbqueueApiError';
  }
}

/**
 * Send a request to `path` (relative to `nbqueue/api/`) and return the decoded JSON body.
 *
 * ServerConnection adds the token and the XSRF header that the server requires for POST and DELETE.
 * Rejects with NbqueueApiError for an error status, and with ServerConnection.NetworkError when the
 * Jupyter server cannot be reached.
 */
export async function requestAPI<T>(
  path: string,
  init: RequestInit = {},
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<T> {
  const url = URLExt.join(settings.baseUrl, 'nbqueue', 'api', path);
  const response = await ServerConnection.makeRequest(url, init, settings);
  const text = await response.text();
  let body: any = null;
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = { message: text };
    }
  }
  if (!response.ok) {
    const message = body?.message ?? `${response.status} ${response.statusText}`;
    throw new NbqueueApiError(response.status, message);
  }
  return body as T;
}
