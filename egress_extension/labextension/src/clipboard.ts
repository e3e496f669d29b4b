/**
 * Copying out of the page, switched off when the project's policy says so (page config
 * `sdeClipboardOut`, set by the workspace server from SDE_CLIPBOARD_OUT, which the hub sets
 * from the project's output policy; anything but "allow" blocks).
 *
 * Blocked: the browser's copy and cut events (keyboard shortcuts, menus, JupyterLab's own
 * copy commands, xterm.js in terminals, CodeMirror editors, rendered outputs: all of them end
 * in a copy event), the asynchronous clipboard API (navigator.clipboard.write/writeText) and
 * native drags out of the page. Each blocked attempt is reported to the workspace server
 * (POST egress/api/clipboard), which ships a `clipboard.copy_blocked` event to the hub's audit
 * log. Paste into the page is untouched. What this cannot stop is in docs/threat-model.md.
 */
import { Notification } from '@jupyterlab/apputils';

import { call } from './api';

const PLACES: [string, string][] = [
  ['.jp-Terminal', 'terminal'],
  ['.jp-OutputArea', 'output'],
  ['.jp-CodeMirrorEditor', 'editor'],
  ['.jp-Notebook', 'notebook'],
  ['.jp-FileEditor', 'editor'],
  ['.jp-DirListing', 'file-browser'],
  ['.jp-Dialog', 'dialog']
];

function where(target: EventTarget | null): string {
  const node = target instanceof Element ? target : (target as Node | null)?.parentElement;
  if (node) {
    for (const [selector, name] of PLACES) {
      if (node.closest(selector)) {
        return name;
      }
    }
  }
  return 'page';
}

export function clipboardBlocked(policy: string): boolean {
  return policy !== 'allow';
}

export function installCopyBlock(): void {
  let lastNotice = 0;
  const report = (action: string, place: string, chars: number): void => {
    void call('POST', 'clipboard', { action, where: place, chars }).catch(() => undefined);
    const now = Date.now();
    if (now - lastNotice > 4000) {
      lastNotice = now;
      Notification.warning(
        'Copying out of the workspace is switched off for this project. ' +
          'Results leave through an export request.',
        { autoClose: 5000 }
      );
    }
  };
  const onCopy = (event: ClipboardEvent): void => {
    const chars = (window.getSelection()?.toString() || '').length;
    event.preventDefault();
    event.stopImmediatePropagation();
    event.clipboardData?.clearData();
    report(event.type, where(event.target), chars);
  };
  window.addEventListener('copy', onCopy, true);
  window.addEventListener('cut', onCopy, true);
  window.addEventListener(
    'dragstart',
    (event: DragEvent) => {
      event.preventDefault();
      event.stopImmediatePropagation();
      report('drag', where(event.target), 0);
    },
    true
  );
  const clip = navigator.clipboard as any;
  if (clip) {
    const refuse = (action: string) => (data: unknown) => {
      report(action, 'script', typeof data === 'string' ? data.length : 0);
      return Promise.reject(new DOMException('Copying out is switched off', 'NotAllowedError'));
    };
    for (const [name, action] of [
      ['writeText', 'write-text'],
      ['write', 'write']
    ]) {
      try {
        Object.defineProperty(clip, name, { value: refuse(action), configurable: false });
      } catch {
        /* a browser without it */
      }
    }
  }
  document.body.dataset.sdeClipboard = 'blocked';
}
