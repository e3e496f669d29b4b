/**
 * "My data": the project's extract as the researcher sees it -- the data dictionary
 * (datasets, columns, types, rows, version) and the files under /data, read-only, with the
 * line of Python that loads each one. From GET egress/api/data (the dictionary the hub wrote
 * into the read-only extract; names and sizes of its files, never their content).
 */
import { tableRowsIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { call, el } from './api';

interface IColumn {
  name: string;
  type: string;
}

interface IDataset {
  name: string;
  files: string[];
  rows: number;
  columns: IColumn[];
  pseudonymised?: boolean;
}

interface IDataInfo {
  data_dir: string;
  files: { name: string; size: number }[];
  dictionary: {
    version?: number | string;
    built_at?: string;
    project?: string;
    datasets?: IDataset[];
  } | null;
  message?: string;
  browser_path?: string | null;
}

function loader(dir: string, file: string): string {
  const path = `${dir}/${file}`;
  if (file.endsWith('.parquet')) {
    return `pd.read_parquet(${JSON.stringify(path)})`;
  }
  return `pd.read_csv(${JSON.stringify(path)})`;
}

export class DataPanel extends Widget {
  constructor() {
    super();
    this.id = 'sde-data';
    this.addClass('sde-panel');
    this.title.icon = tableRowsIcon;
    this.title.caption = "Your project's extract (read-only, in /data)";
  }

  async refresh(): Promise<void> {
    const node = this.node;
    node.textContent = '';
    node.appendChild(el('h2', {}, 'My data'));
    let info: IDataInfo;
    try {
      info = await call<IDataInfo>('GET', 'data');
    } catch (e) {
      node.appendChild(el('p', { class: 'sde-error' }, (e as Error).message));
      return;
    }
    const d = info.dictionary;
    node.appendChild(
      el(
        'p',
        { class: 'sde-muted' },
        `Your extract is mounted read-only at ${info.data_dir}` +
          (d && d.version !== undefined ? `, version ${d.version}` : '') +
          (d && d.built_at ? `, built ${d.built_at}` : '') +
          '. Open it from a notebook; write results into your home.'
      )
    );
    if (info.browser_path) {
      node.appendChild(
        el(
          'p',
          { class: 'sde-browser-path' },
          `In the file browser it is the folder ${info.browser_path}/ (read-only; files in ` +
            'it cannot be exported: export your results instead).'
        )
      );
    }
    if (info.message) {
      node.appendChild(el('p', { class: 'sde-error' }, info.message));
    }
    const files = el('ul', { class: 'sde-data-files' });
    for (const f of info.files) {
      const li = el('li', { 'data-file': f.name });
      li.appendChild(el('code', {}, f.name));
      li.appendChild(document.createTextNode(` · ${f.size} bytes · `));
      li.appendChild(el('code', { class: 'sde-loader' }, loader(info.data_dir, f.name)));
      files.appendChild(li);
    }
    node.appendChild(files);
    for (const ds of (d && d.datasets) || []) {
      const section = el('section', { class: 'sde-dataset', 'data-dataset': ds.name });
      section.appendChild(el('h3', {}, ds.name));
      section.appendChild(
        el(
          'p',
          { class: 'sde-rows' },
          `${ds.rows} rows · ${ds.columns.length} columns · ${ds.files.join(', ')}` +
            (ds.pseudonymised ? ' · pseudonymised for this project' : '')
        )
      );
      const table = el('table', { class: 'sde-columns' });
      const head = el('tr');
      head.appendChild(el('th', {}, 'column'));
      head.appendChild(el('th', {}, 'type'));
      table.appendChild(head);
      for (const c of ds.columns) {
        const tr = el('tr', { 'data-column': c.name });
        tr.appendChild(el('td', {}, c.name));
        tr.appendChild(el('td', {}, c.type));
        table.appendChild(tr);
      }
      section.appendChild(table);
      node.appendChild(section);
    }
  }

  protected onAfterShow(): void {
    void this.refresh();
  }
}
