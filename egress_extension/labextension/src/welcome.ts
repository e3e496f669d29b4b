/**
 * The welcome page: what this room is, where the data is, how exports and imports work and
 * whom to ask. Opened on a researcher's first visit (nothing open in the main area and not
 * seen before in this browser's JupyterLab state) and from the Help menu ("Welcome to the
 * Secure Data Environment"). Facts come from the page config the workspace server writes
 * (sdeProject, sdeSupport, sdeClipboardOut).
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { IStateDB } from '@jupyterlab/statedb';
import { infoIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { el, roomOption } from './api';
import { clipboardBlocked } from './clipboard';

export const SHOW_WELCOME = 'sde:welcome';
const SEEN = '@sde-tre/jupyterlab:welcome-seen';

function section(node: HTMLElement, title: string, paragraphs: string[]): void {
  const s = el('section', { class: 'sde-welcome-section' });
  s.appendChild(el('h2', {}, title));
  for (const p of paragraphs) {
    s.appendChild(el('p', {}, p));
  }
  node.appendChild(s);
}

export class WelcomePage extends Widget {
  constructor() {
    super();
    this.id = 'sde-welcome';
    this.addClass('sde-welcome');
    this.title.label = 'Welcome';
    this.title.icon = infoIcon;
    this.title.closable = true;
    const project = roomOption('sdeProject');
    const support = roomOption('sdeSupport') || 'your project lead or the TRE service desk';
    const node = this.node;
    node.appendChild(el('h1', {}, 'Welcome to the Secure Data Environment'));
    section(node, 'This room', [
      `This workspace is yours alone${project ? `, for the project ${project}` : ''}. ` +
        'It has no internet and no way out: nothing can be downloaded from it, and nobody ' +
        'else can reach it. What you open, save and run here is recorded in the audit log.',
      clipboardBlocked(roomOption('sdeClipboardOut'))
        ? "Copying out of the page is switched off by your project's policy (pasting in works)."
        : "Your project's policy allows copying text out of the page; exports still need review."
    ]);
    section(node, 'Your data', [
      "Your project's extract is mounted read-only at /data: only the columns and rows your " +
        'role needs, pseudonymised for this project. The "My data" panel on the left shows ' +
        'its data dictionary (columns, types, rows, version) and how to load each file.',
      'Work in your home folder (the file browser): it is kept between sessions.'
    ]);
    section(node, 'Getting results out', [
      'Right-click a file in the file browser and choose "Request export…". The automated ' +
        'disclosure checks run first, so you can fix small cell counts before submitting.',
      'Output checkers review exactly the bytes you submitted; approved files are downloaded ' +
        'from the hub outside this workspace. Follow your requests in the "Exports" panel ' +
        'on the right.'
    ]);
    section(node, 'Bringing files in', [
      'You can upload small files (code, reference tables) with the file browser’s upload ' +
        'button; uploads are recorded. For anything else, ask the TRE team.'
    ]);
    section(node, 'Whom to ask', [`Questions about your data, outputs or access: ${support}.`]);
  }
}

export function activateWelcome(app: JupyterFrontEnd, state: IStateDB | null): void {
  let page: WelcomePage | null = null;
  const open = (): void => {
    if (!page || page.isDisposed) {
      page = new WelcomePage();
      app.shell.add(page, 'main');
    }
    app.shell.activateById(page.id);
  };
  app.commands.addCommand(SHOW_WELCOME, {
    label: 'Welcome to the Secure Data Environment',
    execute: open
  });
  void app.restored.then(async () => {
    const seen = state ? await state.fetch(SEEN).catch(() => undefined) : undefined;
    if (!seen) {
      open();
      await state?.save(SEEN, true);
    }
  });
}
