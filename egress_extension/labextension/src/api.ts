/**
 * The workspace server's egress API (egress_extension/handlers.py), the same the export page
 * uses. Every call goes to this server, below its base URL, through JupyterLab's own
 * ServerConnection (which sends the _xsrf token): the page talks to nothing else.
 */
import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export interface IFinding {
  rule: string;
  status: string;
  where: string;
  message: string;
}

export interface ICheckReport {
  path: string;
  status: string;
  findings: IFinding[];
}

export interface IRequestFile {
  path: string;
  size?: number;
  sha256?: string;
  outcome?: string | null;
}

export interface IExportRequest {
  id: number;
  state: string;
  files: IRequestFile[];
  created_at?: string;
  justification?: string;
}

/** What the researcher's page is told about the room (egress_extension's page config). */
export function roomOption(name: string): string {
  return PageConfig.getOption(name);
}

export async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'egress', 'api', path);
  const init: RequestInit = { method };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { 'Content-Type': 'application/json' };
  }
  const response = await ServerConnection.makeRequest(url, init, settings);
  let data: any = {};
  try {
    data = await response.json();
  } catch {
    data = {};
  }
  if (!response.ok) {
    throw new Error(data.message || `HTTP ${response.status}`);
  }
  return data as T;
}

export const LABELS: { [status: string]: string } = {
  fail: 'disclosure rules failed',
  review: "needs a checker's judgement",
  not_fully_checked: 'not fully checked automatically: a checker must look at all of it',
  info: 'nothing to check automatically',
  pass: 'no findings'
};

export function el(
  tag: string,
  attrs: { [name: string]: string } = {},
  text?: string
): HTMLElement {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    node.setAttribute(name, value);
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}
