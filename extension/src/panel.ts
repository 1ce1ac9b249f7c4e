/**
 * The side panel: queues, workers and a jobs table that refresh while visible, and a job detail view
 * with the result history, output and action buttons.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { ServerConnection } from '@jupyterlab/services';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { NbqueueApiError, requestAPI } from './api';
import { dataSignature } from './format';
import { element, renderJobDetail, renderJobs, renderQueues, renderWorkers } from './render';
import { jobActionPath, jobPath, jobsPath } from './routes';
import { RefreshSchedule } from './schedule';
import {
  IActionResponse,
  IJobDetail,
  IJobFilter,
  IJobResponse,
  IJobsResponse,
  IQueuesResponse,
  IWorkersResponse,
  JOB_STATUSES,
  JobAction
} from './types';

/** Refresh intervals and page size, as set in the settings editor. */
export interface IPanelSettings {
  refreshIntervalS: number;
  maxRefreshIntervalS: number;
  pageSize: number;
}

export const DEFAULT_SETTINGS: IPanelSettings = { refreshIntervalS: 2, maxRefreshIntervalS: 30, pageSize: 25 };

/** Actions asked for confirmation, with the dialog's text. */
const CONFIRMATIONS: Partial<Record<JobAction, { verb: string; body: string }>> = {
  stop: { verb: 'Stop', body: 'The worker kills the running job; it records STOPPED and is not retried.' },
  cancel: { verb: 'Cancel', body: 'The job is removed from its queue and will not run.' },
  delete: { verb: 'Delete', body: 'The job, its results and its output are deleted from Redis.' }
};

export class NbqueuePanel extends Widget {
  constructor(serverSettings: ServerConnection.ISettings = ServerConnection.makeSettings()) {
    super();
    this._serverSettings = serverSettings;
    this.id = 'nbqueue-panel';
    this.addClass('nbqueue-panel');
    this.title.caption = 'nbqueue: queues, workers and jobs';

    const header = element('div', 'nbqueue-header');
    header.appendChild(element('span', 'nbqueue-title', 'nbqueue'));
    header.appendChild(this._statusLine);
    const refreshButton = element('button', 'jp-Button nbqueue-refresh', 'Refresh');
    refreshButton.type = 'button';
    refreshButton.addEventListener('click', () => void this.refreshNow());
    header.appendChild(refreshButton);
    this.node.appendChild(header);
    this.node.appendChild(this._errorLine);

    // The detail view comes first, so that a job selected in a narrow sidebar shows without scrolling.
    this._detailSection.appendChild(this._backButton());
    this._detailSection.appendChild(this._detailNode);
    this._detailSection.hidden = true;
    this.node.appendChild(this._detailSection);

    this.node.appendChild(this._section('Queues', this._queuesNode, 'queues'));
    this.node.appendChild(this._section('Workers', this._workersNode, 'workers'));
    const jobs = this._section('Jobs', this._jobsNode, 'jobs');
    jobs.insertBefore(this._filterBar(), this._jobsNode);
    jobs.appendChild(this._pager());
    this.node.appendChild(jobs);


    this._schedule = new RefreshSchedule({
      baseMs: DEFAULT_SETTINGS.refreshIntervalS * 1000,
      maxMs: DEFAULT_SETTINGS.maxRefreshIntervalS * 1000,
      refresh: () => this._refresh()
    });
    document.addEventListener('visibilitychange', this._onVisibilityChange);
  }

  /** Milliseconds until the next automatic refresh. */
  get refreshIntervalMs(): number {
    return this._schedule.intervalMs;
  }

  /** Apply new settings: intervals at once, page size from the first page. */
  configure(settings: IPanelSettings): void {
    this._schedule.configure(settings.refreshIntervalS * 1000, settings.maxRefreshIntervalS * 1000);
    if (settings.pageSize !== this._filter.limit) {
      this._filter = { ...this._filter, limit: settings.pageSize, offset: 0 };
      void this.refreshNow();
    }
  }

  /** Read the server now and reset the refresh interval to its base. */
  refreshNow(): Promise<void> {
    return this._schedule.refreshNow();
  }

  /** Show one job in the detail view. */
  showJob(jobId: string): Promise<void> {
    this._selectedJob = jobId;
    this._detailSignature = '';
    return this.refreshNow();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    document.removeEventListener('visibilitychange', this._onVisibilityChange);
    this._schedule.dispose();
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    if (document.visibilityState !== 'hidden') {
      this._schedule.start();
    }
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this._schedule.stop();
  }

  private _onVisibilityChange = (): void => {
    if (document.visibilityState === 'hidden') {
      this._schedule.stop();
    } else if (this.isVisible) {
      this._schedule.start();
    }
  };

  /** Read everything shown; resolve to whether anything changed, reject when a request failed. */
  private async _refresh(): Promise<boolean> {
    const filter = { ...this._filter };
    const selected = this._selectedJob;
    try {
      const [queues, workers, jobs, detail] = await Promise.all([
        this._get<IQueuesResponse>('queues'),
        this._get<IWorkersResponse>('workers'),
        this._get<IJobsResponse>(jobsPath(filter)),
        selected === null ? Promise.resolve(null) : this._getJob(selected)
      ]);
      this._errorLine.hidden = true;
      this._statusLine.textContent = `updated ${new Date().toLocaleTimeString()}`;

      // Workers are drawn on every refresh, so heartbeat ages stay current while nothing else changes.
      this._workersNode.replaceChildren(renderWorkers(workers.workers));
      const listSignature = dataSignature([queues, workers, jobs, filter]);
      const listChanged = listSignature !== this._listSignature;
      if (listChanged) {
        this._listSignature = listSignature;
        this._queuesNode.replaceChildren(renderQueues(queues.queues, queues.states));
        this._updateQueueOptions(queues.queues.map(queue => queue.name));
        this._jobsNode.replaceChildren(renderJobs(jobs.jobs, jobId => void this.showJob(jobId)));
        this._prevButton.disabled = filter.offset === 0;
        this._nextButton.disabled = !jobs.has_more;
        this._pageLabel.textContent = `page ${Math.floor(filter.offset / filter.limit) + 1}`;
      }
      const detailChanged = this._showDetail(selected, detail);
      return listChanged || detailChanged;
    } catch (error) {
      this._showError(error);
      throw error;
    }
  }

  private async _getJob(jobId: string): Promise<IJobDetail | null> {
    try {
      return (await this._get<IJobResponse>(jobPath(jobId))).job;
    } catch (error) {
      if (error instanceof NbqueueApiError && error.status === 404) {
        return null;
      }
      throw error;
    }
  }

  private _showDetail(selected: string | null, detail: IJobDetail | null): boolean {
    if (selected === null || selected !== this._selectedJob) {
      return false;
    }
    if (detail === null) {
      this._detailNode.replaceChildren(
        element('p', 'nbqueue-empty', `Job ${selected} no longer exists: it was deleted or has expired.`)
      );
      this._detailSection.hidden = false;
      return false;
    }
    const signature = dataSignature(detail);
    if (signature === this._detailSignature) {
      return false;
    }
    this._detailSignature = signature;
    this._detailNode.replaceChildren(renderJobDetail(detail, action => void this._runAction(detail.id, action)));
    this._detailSection.hidden = false;
    return true;
  }

  private async _runAction(jobId: string, action: JobAction): Promise<void> {
    const confirmation = CONFIRMATIONS[action];
    if (confirmation) {
      const result = await showDialog({
        title: `${confirmation.verb} job ${jobId}?`,
        body: confirmation.body,
        buttons: [Dialog.cancelButton({ label: 'Keep' }), Dialog.warnButton({ label: confirmation.verb })]
      });
      if (!result.button.accept) {
        return;
      }
    }
    try {
      await this._send<IActionResponse>(jobActionPath(jobId, action));
      this._statusLine.textContent = `${action} sent for job ${jobId}`;
    } catch (error) {
      this._showError(error);
      return;
    }
    if (action === 'delete') {
      this._closeDetail();
    }
    await this.refreshNow();
  }

  private _closeDetail(): void {
    this._selectedJob = null;
    this._detailSignature = '';
    this._detailSection.hidden = true;
    this._detailNode.replaceChildren();
  }

  private _showError(error: unknown): void {
    let message = String(error);
    if (error instanceof NbqueueApiError) {
      message = `${error.status}: ${error.message}`;
    } else if (error instanceof Error) {
      message = error.message;
    }
    this._errorLine.textContent = message;
    this._errorLine.hidden = false;
  }

  private _get<T>(path: string): Promise<T> {
    return requestAPI<T>(path, { method: 'GET' }, this._serverSettings);
  }

  private _send<T>(path: string): Promise<T> {
    return requestAPI<T>(path, { method: 'POST' }, this._serverSettings);
  }

  private _section(title: string, content: HTMLElement, name: string): HTMLElement {
    const section = element('section', `nbqueue-section nbqueue-section-${name}`);
    section.appendChild(element('h3', '', title));
    section.appendChild(content);
    return section;
  }

  private _filterBar(): HTMLElement {
    const bar = element('div', 'nbqueue-filters');
    this._queueSelect.setAttribute('aria-label', 'queue');
    this._queueSelect.appendChild(new Option('all queues', ''));
    this._statusSelect.setAttribute('aria-label', 'status');
    this._statusSelect.appendChild(new Option('all states', ''));
    for (const status of JOB_STATUSES) {
      this._statusSelect.appendChild(new Option(status, status));
    }
    this._tagInput.placeholder = 'tag';
    this._tagInput.setAttribute('aria-label', 'tag');
    const apply = () => {
      this._filter = {
        ...this._filter,
        queue: this._queueSelect.value,
        status: this._statusSelect.value,
        tag: this._tagInput.value.trim(),
        offset: 0
      };
      void this.refreshNow();
    };
    this._queueSelect.addEventListener('change', apply);
    this._statusSelect.addEventListener('change', apply);
    this._tagInput.addEventListener('change', apply);
    bar.append(this._queueSelect, this._statusSelect, this._tagInput);
    return bar;
  }

  private _updateQueueOptions(names: string[]): void {
    const current = this._queueSelect.value;
    const known = Array.from(this._queueSelect.options).map(option => option.value);
    for (const name of names) {
      if (!known.includes(name)) {
        this._queueSelect.appendChild(new Option(name, name));
      }
    }
    this._queueSelect.value = current;
  }

  private _pager(): HTMLElement {
    const pager = element('div', 'nbqueue-pager');
    this._prevButton.type = 'button';
    this._nextButton.type = 'button';
    this._prevButton.disabled = true;
    this._nextButton.disabled = true;
    this._prevButton.addEventListener('click', () => {
      this._filter = { ...this._filter, offset: Math.max(0, this._filter.offset - this._filter.limit) };
      void this.refreshNow();
    });
    this._nextButton.addEventListener('click', () => {
      this._filter = { ...this._filter, offset: this._filter.offset + this._filter.limit };
      void this.refreshNow();
    });
    pager.append(this._prevButton, this._pageLabel, this._nextButton);
    return pager;
  }

  private _backButton(): HTMLElement {
    const button = element('button', 'jp-Button nbqueue-back', '← All jobs');
    button.type = 'button';
    button.addEventListener('click', () => this._closeDetail());
    return button;
  }

  private _serverSettings: ServerConnection.ISettings;
  private _schedule: RefreshSchedule;
  private _filter: IJobFilter = { queue: '', status: '', tag: '', offset: 0, limit: DEFAULT_SETTINGS.pageSize };
  private _selectedJob: string | null = null;
  private _listSignature = '';
  private _detailSignature = '';
  private _statusLine = element('span', 'nbqueue-updated');
  private _errorLine = Object.assign(element('div', 'nbqueue-error'), { hidden: true });
  private _queuesNode = element('div', 'nbqueue-queues');
  private _workersNode = element('div', 'nbqueue-workers');
  private _jobsNode = element('div', 'nbqueue-jobs');
  private _detailSection = element('section', 'nbqueue-section nbqueue-section-detail');
  private _detailNode = element('div', 'nbqueue-detail');
  private _queueSelect = element('select', 'nbqueue-filter-queue');
  private _statusSelect = element('select', 'nbqueue-filter-status');
  private _tagInput = element('input', 'nbqueue-filter-tag');
  private _prevButton = element('button', 'jp-Button nbqueue-prev', 'Newer');
  private _nextButton = element('button', 'jp-Button nbqueue-next', 'Older');
  private _pageLabel = element('span', 'nbqueue-page', 'page 1');
}
