/**
 * Export requests from JupyterLab: "Request export…" in the file browser's context menu (a
 * dialog with the automated disclosure checks of each file, a description per file and the
 * justification) and the "Exports" side panel (the person's requests, their states, withdraw).
 * Everything goes through egress/api/ (the same API as the export page); the rules are
 * enforced there and again by the hub-side checking service.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { IFileBrowserFactory } from '@jupyterlab/filebrowser';
import { shareIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { call, el, ICheckReport, IExportRequest, LABELS } from './api';

export const REQUEST_EXPORT = 'sde:request-export';
export const SHOW_EXPORTS = 'sde:show-exports';

function checksBox(path: string): HTMLElement {
  const box = el('div', { class: 'sde-checks', 'aria-live': 'polite' }, 'Checking…');
  call<ICheckReport>('GET', 'checks?path=' + encodeURIComponent(path))
    .then(report => {
      box.textContent = '';
      box.dataset.status = report.status;
      box.classList.add('sde-' + report.status);
      box.appendChild(
        el('strong', {}, 'Automated checks: ' + (LABELS[report.status] || report.status))
      );
      if (report.findings.length) {
        const list = el('ul');
        for (const f of report.findings) {
          list.appendChild(
            el('li', { 'data-rule': f.rule }, `${f.status} · ${f.rule} · ${f.where}: ${f.message}`)
          );
        }
        box.appendChild(list);
      }
    })
    .catch((e: Error) => {
      box.textContent = e.message;
      box.dataset.status = 'error';
      box.classList.add('sde-error');
    });
  return box;
}

/** The body of the "Request export" dialog: per file its checks and a description. */
class RequestForm extends Widget {
  constructor(readonly paths: string[]) {
    super();
    this.addClass('sde-request-form');
    const intro = el(
      'p',
      {},
      'An output checker reviews exactly these bytes before anything leaves. ' +
        'Say what each file is and why it needs to leave.'
    );
    this.node.appendChild(intro);
    paths.forEach((path, i) => {
      const row = el('div', { class: 'sde-file', 'data-path': path });
      row.appendChild(el('div', { class: 'sde-path' }, path));
      row.appendChild(checksBox(path));
      const desc = el('input', {
        type: 'text',
        class: 'sde-description',
        id: 'sde-desc-' + i,
        placeholder: 'What this file contains',
        'aria-label': 'Description of ' + path
      });
      row.appendChild(desc);
      this.node.appendChild(row);
    });
    const label = el('label', { for: 'sde-justification' }, 'Justification');
    const area = el('textarea', { id: 'sde-justification', rows: '3', class: 'sde-justification' });
    this.node.appendChild(label);
    this.node.appendChild(area);
  }

  getValue(): { files: { path: string; description: string }[]; justification: string } {
    const files = this.paths.map((path, i) => ({
      path,
      description: (this.node.querySelector('#sde-desc-' + i) as HTMLInputElement).value
    }));
    const justification = (this.node.querySelector('#sde-justification') as HTMLTextAreaElement)
      .value;
    return { files, justification };
  }
}

/** The "Exports" side panel: the person's requests, polled while it is shown. */
export class ExportsPanel extends Widget {
  private timer = 0;
  private list: HTMLElement;
  private message: HTMLElement;

  constructor() {
    super();
    this.id = 'sde-exports';
    this.addClass('sde-panel');
    this.title.icon = shareIcon;
    this.title.caption = 'Your export requests';
    this.node.appendChild(el('h2', {}, 'Export requests'));
    this.node.appendChild(
      el(
        'p',
        { class: 'sde-muted' },
        'Right-click a file in the file browser and choose "Request export…". ' +
          'Output checkers review every request; approved files are downloaded outside the workspace.'
      )
    );
    this.message = el('p', { class: 'sde-message', role: 'status' });
    this.node.appendChild(this.message);
    this.list = el('div', { class: 'sde-requests' });
    this.node.appendChild(this.list);
  }

  say(text: string, kind = ''): void {
    this.message.textContent = text;
    this.message.className = 'sde-message ' + kind;
  }

  async refresh(): Promise<void> {
    let items: IExportRequest[];
    try {
      items = (await call<{ requests: IExportRequest[] }>('GET', 'requests')).requests || [];
    } catch (e) {
      this.list.textContent = '';
      this.list.appendChild(el('p', { class: 'sde-error' }, (e as Error).message));
      return;
    }
    this.list.textContent = '';
    if (!items.length) {
      this.list.appendChild(el('p', { class: 'sde-muted' }, 'No requests yet.'));
    }
    for (const r of items) {
      const card = el('div', { class: 'sde-request', 'data-request': String(r.id) });
      const head = el('div', { class: 'sde-request-head' });
      head.appendChild(el('span', { class: 'sde-id' }, `#${r.id}`));
      head.appendChild(el('span', { class: 'sde-state', 'data-state': r.state }, r.state));
      card.appendChild(head);
      const files = el('ul', { class: 'sde-request-files' });
      for (const f of r.files || []) {
        const li = el('li', { 'data-path': f.path }, f.path + (f.outcome ? ` (${f.outcome})` : ''));
        files.appendChild(li);
      }
      card.appendChild(files);
      if (r.created_at) {
        card.appendChild(el('div', { class: 'sde-muted' }, r.created_at));
      }
      if (r.state === 'submitted' || r.state === 'in_review') {
        const b = el('button', { type: 'button', class: 'jp-Button sde-withdraw' }, 'Withdraw');
        b.addEventListener('click', () => {
          call('POST', `requests/${r.id}/withdraw`, {})
            .then(() => this.say(`Request ${r.id} withdrawn.`, 'sde-ok'))
            .catch((e: Error) => this.say(e.message, 'sde-error'))
            .then(() => this.refresh());
        });
        card.appendChild(b);
      }
      this.list.appendChild(card);
    }
  }

  protected onAfterShow(): void {
    void this.refresh();
    window.clearInterval(this.timer);
    this.timer = window.setInterval(() => void this.refresh(), 5000);
  }

  protected onAfterHide(): void {
    window.clearInterval(this.timer);
  }

  dispose(): void {
    window.clearInterval(this.timer);
    super.dispose();
  }
}

export function activateExports(app: JupyterFrontEnd, factory: IFileBrowserFactory): void {
  const panel = new ExportsPanel();
  app.shell.add(panel, 'right', { rank: 100 });

  app.commands.addCommand(SHOW_EXPORTS, {
    label: 'Export requests',
    execute: () => app.shell.activateById(panel.id)
  });

  app.commands.addCommand(REQUEST_EXPORT, {
    label: 'Request export…',
    caption: 'Ask the output checkers to release these files',
    isVisible: () => {
      const browser = factory.tracker.currentWidget;
      if (!browser) {
        return false;
      }
      const items = Array.from(browser.selectedItems());
      return items.length > 0 && items.every(item => item.type !== 'directory');
    },
    execute: async () => {
      const browser = factory.tracker.currentWidget;
      if (!browser) {
        return;
      }
      const paths = Array.from(browser.selectedItems())
        .filter(item => item.type !== 'directory')
        .map(item => item.path);
      if (!paths.length) {
        return;
      }
      const result = await showDialog({
        title: 'Request export',
        body: new RequestForm(paths),
        buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Submit for checking' })]
      });
      if (!result.button.accept || !result.value) {
        return;
      }
      app.shell.activateById(panel.id);
      panel.say('Sending for checking…');
      try {
        const made = await call<IExportRequest>('POST', 'requests', result.value);
        panel.say(`Request ${made.id} submitted (${made.files.length} file(s)).`, 'sde-ok');
      } catch (e) {
        panel.say((e as Error).message, 'sde-error');
      }
      await panel.refresh();
    }
  });

  app.contextMenu.addItem({
    command: REQUEST_EXPORT,
    selector: '.jp-DirListing-item[data-isdir="false"]',
    rank: 1
  });
}
