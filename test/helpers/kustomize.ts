import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parse as parseYaml, parseAllDocuments } from 'yaml';

// Loose on purpose: manifests are arbitrary YAML until validated.
type Manifest = Record<string, any>;

/** The kustomization fields `buildKustomization` applies; any other field fails the build rather than being skipped. */
const KNOWN_FIELDS = new Set(['apiVersion', 'kind', 'resources', 'namespace', 'images', 'replicas', 'patches', 'labels']);

/**
 * A small offline stand-in for `kubectl kustomize <dir>`, so the overlay's output is validated on
 * machines without kubectl too: resources (files and directories), namespace, labels (metadata
 * only), images, replicas and JSON 6902 patches. It throws on anything else instead of guessing,
 * and the manifest test compares it with kubectl's output wherever kubectl exists.
 */
export function buildKustomization(dir: string): Manifest[] {
  const k = parseYaml(readFileSync(join(dir, 'kustomization.yaml'), 'utf8')) as Manifest;
  const unknown = Object.keys(k).filter((key) => !KNOWN_FIELDS.has(key));
  if (unknown.length > 0) throw new Error(`${dir}: kustomization fields not supported offline: ${unknown.join(', ')}`);
  const docs = (k.resources as string[]).flatMap((res) => loadResource(join(dir, res)));
  for (const label of k.labels ?? []) {
    if (label.includeSelectors || label.includeTemplates) throw new Error(`${dir}: labels on selectors or templates are not supported offline`);
    for (const doc of docs) doc.metadata.labels = { ...doc.metadata.labels, ...label.pairs };
  }
  for (const patch of k.patches ?? []) applyPatch(dir, docs, patch);
  for (const r of k.replicas ?? []) {
    const targets = docs.filter((d) => d.metadata.name === r.name && d.spec?.replicas !== undefined);
    if (targets.length === 0) throw new Error(`${dir}: replicas for unknown ${r.name}`);
    for (const d of targets) d.spec.replicas = r.count;
  }
  for (const image of k.images ?? []) setImage(docs, image);
  if (k.namespace) for (const doc of docs) doc.metadata.namespace = k.namespace;
  return docs;
}

function loadResource(path: string): Manifest[] {
  if (!existsSync(path)) throw new Error(`missing resource ${path}`);
  if (statSync(path).isDirectory()) return buildKustomization(path);
  return parseAllDocuments(readFileSync(path, 'utf8'))
    .map((d) => d.toJS() as Manifest | null)
    .filter((d): d is Manifest => d !== null);
}

function applyPatch(dir: string, docs: Manifest[], patch: Manifest): void {
  const text = patch.path ? readFileSync(join(dir, patch.path), 'utf8') : patch.patch;
  const ops = parseYaml(text) as unknown;
  if (!Array.isArray(ops)) throw new Error(`${dir}: only JSON 6902 patches (a list of ops) are supported offline`);
  const t = patch.target ?? {};
  const targets = docs.filter((d) => {
    const [group, version] = String(d.apiVersion).includes('/') ? String(d.apiVersion).split('/') : ['', d.apiVersion];
    return (t.kind === undefined || t.kind === d.kind) && (t.name === undefined || t.name === d.metadata.name)
      && (t.group === undefined || t.group === group) && (t.version === undefined || t.version === version);
  });
  if (targets.length === 0) throw new Error(`${dir}: patch target ${JSON.stringify(t)} matches nothing`);
  for (const doc of targets) for (const op of ops as Manifest[]) applyOp(doc, op);
}

/** One JSON Patch (RFC 6902) operation: add, replace or remove. */
function applyOp(doc: Manifest, op: Manifest): void {
  const keys = String(op.path).split('/').slice(1).map((p) => p.replaceAll('~1', '/').replaceAll('~0', '~'));
  const last = keys.pop()!;
  let parent: any = doc;
  for (const key of keys) {
    parent = parent?.[key];
    if (parent === undefined) throw new Error(`patch path ${op.path} does not exist`);
  }
  if (op.op === 'add' && Array.isArray(parent)) {
    parent.splice(last === '-' ? parent.length : Number(last), 0, op.value);
  } else if (op.op === 'add' || op.op === 'replace') {
    if (op.op === 'replace' && !(last in parent)) throw new Error(`patch replace ${op.path}: nothing to replace`);
    parent[last] = op.value;
  } else if (op.op === 'remove') {
    if (Array.isArray(parent)) parent.splice(Number(last), 1);
    else delete parent[last];
  } else {
    throw new Error(`patch op ${op.op} not supported offline`);
  }
}

function setImage(docs: Manifest[], image: Manifest): void {
  for (const doc of docs) {
    const spec = doc.spec?.template?.spec;
    for (const c of [...(spec?.containers ?? []), ...(spec?.initContainers ?? [])]) {
      const [name, tag] = String(c.image).split(':');
      if (name !== image.name) continue;
      c.image = `${image.newName ?? name}${image.newTag ?? tag ? `:${image.newTag ?? tag}` : ''}`;
    }
  }
}
