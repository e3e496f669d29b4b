/**
 * The TRE's JupyterLab: export requests from the file browser and the Exports panel
 * (exports.ts), "My data" (data.ts), copying out blocked when the project's policy says so
 * (clipboard.ts) and the welcome page (welcome.ts). Prebuilt and shipped in the image; it calls only this workspace's server.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { IFileBrowserFactory } from '@jupyterlab/filebrowser';
import { IStateDB } from '@jupyterlab/statedb';

import { roomOption } from './api';
import { clipboardBlocked, installCopyBlock } from './clipboard';
import { DataPanel } from './data';
import { activateExports, SHOW_EXPORTS } from './exports';
import { activateWelcome, SHOW_WELCOME } from './welcome';

const exportsPlugin: JupyterFrontEndPlugin<void> = {
  id: '@sde-tre/jupyterlab:exports',
  description: 'Request export from the file browser; the Exports panel.',
  autoStart: true,
  requires: [IFileBrowserFactory],
  activate: (app: JupyterFrontEnd, factory: IFileBrowserFactory) => {
    activateExports(app, factory);
  }
};

const dataPlugin: JupyterFrontEndPlugin<void> = {
  id: '@sde-tre/jupyterlab:data',
  description: "The project's extract: data dictionary and files in /data.",
  autoStart: true,
  activate: (app: JupyterFrontEnd) => {
    const panel = new DataPanel();
    app.shell.add(panel, 'left', { rank: 50 });
    app.commands.addCommand('sde:show-data', {
      label: 'My data',
      execute: () => app.shell.activateById(panel.id)
    });
  }
};

const clipboardPlugin: JupyterFrontEndPlugin<void> = {
  id: '@sde-tre/jupyterlab:clipboard',
  description: "Copying out of the page, blocked and audited by the project's policy.",
  autoStart: true,
  activate: () => {
    if (clipboardBlocked(roomOption('sdeClipboardOut'))) {
      installCopyBlock();
    }
  }
};

const welcomePlugin: JupyterFrontEndPlugin<void> = {
  id: '@sde-tre/jupyterlab:welcome',
  description: 'The welcome page: the room, the data, exports and imports, whom to ask.',
  autoStart: true,
  optional: [IStateDB, ICommandPalette],
  activate: (app: JupyterFrontEnd, state: IStateDB | null, palette: ICommandPalette | null) => {
    activateWelcome(app, state);
    if (palette) {
      const category = 'Secure Data Environment';
      for (const command of [SHOW_WELCOME, SHOW_EXPORTS, 'sde:show-data']) {
        palette.addItem({ command, category });
      }
    }
  }
};

export default [exportsPlugin, dataPlugin, clipboardPlugin, welcomePlugin];
