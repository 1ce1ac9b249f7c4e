/**
 * The nbqueue JupyterLab extension: a left side panel, its palette commands and its settings.
 */
import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { LabIcon } from '@jupyterlab/ui-components';

import { DEFAULT_SETTINGS, IPanelSettings, NbqueuePanel } from './panel';

const PLUGIN_ID = 'nbqueue:plugin';

/** Command ids, as the command palette and keyboard shortcuts name them. */
export namespace CommandIDs {
  export const open = 'nbqueue:open';
  export const refresh = 'nbqueue:refresh';
}

/** Three stacked bars: a queue. */
export const queueIcon = new LabIcon({
  name: 'nbqueue:queue',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">' +
    '<g class="jp-icon3" fill="#616161">' +
    '<rect x="3" y="4" width="18" height="4" rx="1"/>' +
    '<rect x="3" y="10" width="14" height="4" rx="1"/>' +
    '<rect x="3" y="16" width="10" height="4" rx="1"/>' +
    '</g></svg>'
});

/** Read the panel's settings, falling back to the defaults for missing values. */
function readSettings(settings: ISettingRegistry.ISettings | null): IPanelSettings {
  if (!settings) {
    return DEFAULT_SETTINGS;
  }
  return {
    refreshIntervalS: (settings.get('refreshInterval').composite as number) ?? DEFAULT_SETTINGS.refreshIntervalS,
    maxRefreshIntervalS:
      (settings.get('maxRefreshInterval').composite as number) ?? DEFAULT_SETTINGS.maxRefreshIntervalS,
    pageSize: (settings.get('pageSize').composite as number) ?? DEFAULT_SETTINGS.pageSize
  };
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'A side panel to watch and control nbqueue queues, workers and jobs.',
  autoStart: true,
  optional: [ICommandPalette, ISettingRegistry, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    settingRegistry: ISettingRegistry | null,
    restorer: ILayoutRestorer | null
  ) => {
    const panel = new NbqueuePanel(app.serviceManager.serverSettings);
    panel.title.icon = queueIcon;
    app.shell.add(panel, 'left', { rank: 600 });
    if (restorer) {
      restorer.add(panel, 'nbqueue-panel');
    }

    app.commands.addCommand(CommandIDs.open, {
      label: 'nbqueue: Open panel',
      caption: 'Show the nbqueue side panel with queues, workers and jobs',
      icon: queueIcon,
      execute: () => app.shell.activateById(panel.id)
    });
    app.commands.addCommand(CommandIDs.refresh, {
      label: 'nbqueue: Refresh',
      caption: 'Read queues, workers and jobs from Redis now',
      execute: () => panel.refreshNow()
    });
    if (palette) {
      palette.addItem({ command: CommandIDs.open, category: 'nbqueue' });
      palette.addItem({ command: CommandIDs.refresh, category: 'nbqueue' });
    }

    if (settingRegistry) {
      settingRegistry
        .load(PLUGIN_ID)
        .then(settings => {
          panel.configure(readSettings(settings));
          settings.changed.connect(() => panel.configure(readSettings(settings)));
        })
        .catch(reason => console.error('nbqueue: cannot load the panel settings', reason));
    }
  }
};

export default plugin;
