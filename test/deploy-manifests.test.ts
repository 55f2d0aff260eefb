import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, matchesGlob, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ScaledObject, TriggerAuthentication } from '@kubernetes-models/keda/keda.sh/v1alpha1';
import { Deployment } from 'kubernetes-models/apps/v1';
import { HorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import { ConfigMap, Secret, Service } from 'kubernetes-models/v1';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml, parseAllDocuments } from 'yaml';

/*
 * Offline checks of the shipping artefacts: deploy/ (kustomize), docker-compose.yml, Dockerfile.
 * kubernetes-models validates types and required fields but accepts unknown keys, so the fields
 * we rely on are also checked against a known-keys list (a typo like `readinessProb` would
 * otherwise be dropped silently by the API server).
 */

// Loose on purpose: manifests are arbitrary YAML until validated.
type Manifest = Record<string, any>;
interface Doc {
  file: string;
  obj: Manifest;
}

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const DEPLOY = join(ROOT, 'deploy');
const KUSTOMIZE = 'kustomize.config.k8s.io/v1beta1/Kustomization';

/** apiVersion/kind -> model class; anything else under deploy/ is a mistake. */
const MODELS: Record<string, new (data: never) => { validate(): void }> = {
  'apps/v1/Deployment': Deployment,
  'v1/Service': Service,
  'v1/ConfigMap': ConfigMap,
  'v1/Secret': Secret,
  'autoscaling/v2/HorizontalPodAutoscaler': HorizontalPodAutoscaler,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'keda.sh/v1alpha1/ScaledObject': ScaledObject,
  'keda.sh/v1alpha1/TriggerAuthentication': TriggerAuthentication,
};

/** Validates one manifest against its schema; throws on an unknown apiVersion/kind. */
function validateManifest(obj: Manifest): void {
  const key = `${obj.apiVersion}/${obj.kind}`;
  if (key === KUSTOMIZE) return;
  const Model = MODELS[key];
  if (!Model) throw new Error(`unknown kind ${key}`);
  new Model(obj as never).validate();
}

// Known keys of the parts we write. `true` accepts any value (maps such as labels, quantities).
type Shape = { [key: string]: true | Shape | [Shape] };
const ANY = true;
const httpGet: Shape = { path: ANY, port: ANY, scheme: ANY, host: ANY, httpHeaders: ANY };
const probe: Shape = {
  httpGet,
  initialDelaySeconds: ANY,
  periodSeconds: ANY,
  timeoutSeconds: ANY,
  successThreshold: ANY,
  failureThreshold: ANY,
  terminationGracePeriodSeconds: ANY,
};
const handler: Shape = { sleep: { seconds: ANY }, httpGet, exec: { command: ANY } };
const container: Shape = {
  name: ANY,
  image: ANY,
  imagePullPolicy: ANY,
  command: ANY,
  args: ANY,
  ports: [{ name: ANY, containerPort: ANY, protocol: ANY }],
  env: [{ name: ANY, value: ANY, valueFrom: ANY }],
  envFrom: [{ configMapRef: { name: ANY, optional: ANY }, secretRef: { name: ANY, optional: ANY }, prefix: ANY }],
  resources: { requests: ANY, limits: ANY },
  startupProbe: probe,
  livenessProbe: probe,
  readinessProbe: probe,
  lifecycle: { preStop: handler, postStart: handler },
  securityContext: {
    allowPrivilegeEscalation: ANY,
    readOnlyRootFilesystem: ANY,
    runAsNonRoot: ANY,
    runAsUser: ANY,
    runAsGroup: ANY,
    capabilities: { add: ANY, drop: ANY },
    seccompProfile: { type: ANY },
  },
  volumeMounts: [{ name: ANY, mountPath: ANY, readOnly: ANY, subPath: ANY }],
};
const metadata: Shape = { name: ANY, namespace: ANY, labels: ANY, annotations: ANY };
const DEPLOYMENT_SHAPE: Shape = {
  apiVersion: ANY,
  kind: ANY,
  metadata,
  spec: {
    replicas: ANY,
    revisionHistoryLimit: ANY,
    minReadySeconds: ANY,
    progressDeadlineSeconds: ANY,
    selector: ANY,
    strategy: { type: ANY, rollingUpdate: { maxSurge: ANY, maxUnavailable: ANY } },
    template: {
      metadata,
      spec: {
        containers: [container],
        terminationGracePeriodSeconds: ANY,
        automountServiceAccountToken: ANY,
        enableServiceLinks: ANY,
        serviceAccountName: ANY,
        securityContext: { runAsNonRoot: ANY, runAsUser: ANY, runAsGroup: ANY, fsGroup: ANY, seccompProfile: { type: ANY } },
        topologySpreadConstraints: [
          { maxSkew: ANY, topologyKey: ANY, whenUnsatisfiable: ANY, labelSelector: ANY, matchLabelKeys: ANY, minDomains: ANY },
        ],
        volumes: [{ name: ANY, emptyDir: { medium: ANY, sizeLimit: ANY } }],
      },
    },
  },
};
// KEDA's trigger metadata is a string map in the CRD: a misspelt `listName` passes any schema.
const SCALED_OBJECT_SHAPE: Shape = {
  apiVersion: ANY,
  kind: ANY,
  metadata,
  spec: {
    scaleTargetRef: { name: ANY, kind: ANY, apiVersion: ANY },
    minReplicaCount: ANY,
    maxReplicaCount: ANY,
    pollingInterval: ANY,
    cooldownPeriod: ANY,
    advanced: { horizontalPodAutoscalerConfig: { behavior: ANY, name: ANY }, restoreToOriginalReplicaCount: ANY },
    triggers: [
      {
        type: ANY,
        metadata: {
          listName: ANY,
          listLength: ANY,
          activationListLength: ANY,
          databaseIndex: ANY,
          address: ANY,
          addresses: ANY,
          enableTLS: ANY,
        },
        authenticationRef: { name: ANY, kind: ANY },
      },
    ],
  },
};

/** Paths of keys the shape does not know, e.g. `spec.template.spec.containers[0].readinessProb`. */
function unknownKeys(value: unknown, shape: Shape, path = ''): string[] {
  if (!value || typeof value !== 'object' || Array.isArray(value)) return [];
  const out: string[] = [];
  for (const [key, child] of Object.entries(value)) {
    const at = path ? `${path}.${key}` : key;
    const rule = shape[key];
    if (rule === undefined) out.push(at);
    else if (Array.isArray(rule)) {
      if (Array.isArray(child)) child.forEach((item, i) => out.push(...unknownKeys(item, rule[0], `${at}[${i}]`)));
    } else if (rule !== ANY) out.push(...unknownKeys(child, rule, at));
  }
  return out;
}

function yamlFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return yamlFiles(path);
    return /\.ya?ml$/.test(name) ? [path] : [];
  });
}

function parseDocs(text: string, file: string): Doc[] {
  return parseAllDocuments(text).flatMap((doc) => {
    if (doc.errors.length > 0) throw new Error(`${file}: ${doc.errors[0]!.message}`);
    const obj = doc.toJS() as Manifest | null;
    return obj ? [{ file, obj }] : [];
  });
}

const DOCS: Doc[] = yamlFiles(DEPLOY).flatMap((file) => parseDocs(readFileSync(file, 'utf8'), relative(ROOT, file)));
const BASE = DOCS.filter((d) => d.file.startsWith('deploy/base/') && `${d.obj.apiVersion}/${d.obj.kind}` !== KUSTOMIZE);

function find(kind: string, name: string): Manifest {
  const doc = BASE.find((d) => d.obj.kind === kind && d.obj.metadata?.name === name);
  if (!doc) throw new Error(`no ${kind} ${name} in deploy/base`);
  return doc.obj;
}

/** The container of a Deployment, and its named ports resolved to numbers. */
function containerOf(name: string) {
  const c = find('Deployment', name).spec.template.spec.containers[0];
  const port = (p: string | number) => (typeof p === 'number' ? p : c.ports.find((x: Manifest) => x.name === p)?.containerPort);
  return { c, port };
}

function envOf(c: Manifest, name: string): string | undefined {
  return c.env?.find((e: Manifest) => e.name === name)?.value;
}

const DEPLOYMENTS = BASE.filter((d) => d.obj.kind === 'Deployment');
const kubectl = (() => {
  try {
    execFileSync('kubectl', ['version', '--client'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

describe('deploy/ manifests', () => {
  it('parses every YAML document and validates it against its Kubernetes or KEDA schema', () => {
    expect(DOCS.length).toBeGreaterThan(10);
    const failures = DOCS.flatMap(({ file, obj }) => {
      try {
        validateManifest(obj);
        return [];
      } catch (err) {
        return [`${file} ${obj.kind}/${obj.metadata?.name}: ${(err as Error).message}`];
      }
    });
    expect(failures).toEqual([]);
  });

  it('refuses an unknown kind and a wrongly typed field', () => {
    expect(() => validateManifest({ apiVersion: 'apps/v1', kind: 'Deploymnet' })).toThrow(/unknown kind/);
    const hpa = structuredClone(find('HorizontalPodAutoscaler', 'wxdify-ingress'));
    hpa.spec.metrics[0].resource.target.averageUtilization = '65';
    expect(() => validateManifest(hpa)).toThrow();
  });

  it('knows every container, probe and lifecycle key the Deployments and the ScaledObject use', () => {
    for (const { file, obj } of DEPLOYMENTS) expect(unknownKeys(obj, DEPLOYMENT_SHAPE), file).toEqual([]);
    expect(unknownKeys(find('ScaledObject', 'wxdify-worker'), SCALED_OBJECT_SHAPE)).toEqual([]);
  });

  it('catches a misspelt probe, lifecycle or trigger key that the schema lets through', () => {
    const dep = structuredClone(find('Deployment', 'wxdify-ingress'));
    const c = dep.spec.template.spec.containers[0];
    c.readinessProb = c.readinessProbe;
    delete c.readinessProbe;
    c.lifecycle = { prestop: c.lifecycle.preStop };
    c.livenessProbe.httpGet = { paht: '/healthz', port: 'http' };
    expect(() => validateManifest(dep)).not.toThrow();
    expect(unknownKeys(dep, DEPLOYMENT_SHAPE)).toEqual([
      'spec.template.spec.containers[0].livenessProbe.httpGet.paht',
      'spec.template.spec.containers[0].lifecycle.prestop',
      'spec.template.spec.containers[0].readinessProb',
    ]);
    const so = structuredClone(find('ScaledObject', 'wxdify-worker'));
    so.spec.triggers[0].metadata.listname = 'x';
    expect(unknownKeys(so, SCALED_OBJECT_SHAPE)).toEqual(['spec.triggers[0].metadata.listname']);
  });

  it('lists in kustomization.yaml only files that exist, and every base manifest but the secret example', () => {
    const kustomizations = DOCS.filter((d) => `${d.obj.apiVersion}/${d.obj.kind}` === KUSTOMIZE);
    expect(kustomizations.map((k) => k.file).sort()).toEqual(['deploy/base/kustomization.yaml', 'deploy/overlays/prod/kustomization.yaml']);
    for (const { file, obj } of kustomizations) {
      for (const res of obj.resources as string[]) {
        const path = join(ROOT, dirname(file), res);
        expect(existsSync(path), `${file}: ${res}`).toBe(true);
        if (statSync(path).isDirectory()) expect(existsSync(join(path, 'kustomization.yaml')), `${file}: ${res}`).toBe(true);
      }
    }
    // Every file in deploy/base, including one that holds only comments or fails to parse.
    const listed = new Set(kustomizations.find((k) => k.file.startsWith('deploy/base/'))!.obj.resources);
    const files = readdirSync(join(DEPLOY, 'base')).filter((f) => f !== 'kustomization.yaml');
    expect(files.filter((f) => !listed.has(f))).toEqual(['secret.example.yaml']);
  });

  it('patches in the prod overlay only resources and images the base has', () => {
    const prod = DOCS.find((d) => d.file === 'deploy/overlays/prod/kustomization.yaml')!.obj;
    for (const p of prod.patches ?? []) expect(() => find(p.target.kind, p.target.name)).not.toThrow();
    for (const r of prod.replicas ?? []) expect(() => find('Deployment', r.name)).not.toThrow();
    const images = DEPLOYMENTS.map((d) => String(d.obj.spec.template.spec.containers[0].image).split(':')[0]);
    for (const i of prod.images ?? []) expect(images).toContain(i.name);
  });

  // kubectl ships with this project's machine image (and kustomize inside it); every file above is
  // validated on its own either way, so a machine without kubectl loses only the overlay's output check.
  it.skipIf(!kubectl)('builds base and overlay with kubectl kustomize and the output validates', () => {
    const build = (dir: string) =>
      parseDocs(execFileSync('kubectl', ['kustomize', join(ROOT, dir)], { encoding: 'utf8' }), dir).map((d) => d.obj);
    for (const dir of ['deploy/base', 'deploy/overlays/prod']) {
      const out = build(dir);
      expect(out.length, dir).toBeGreaterThanOrEqual(9);
      for (const obj of out) expect(() => validateManifest(obj), `${dir} ${obj.kind}/${obj.metadata.name}`).not.toThrow();
    }
    const prod = build('deploy/overlays/prod');
    expect(prod.every((d) => d.metadata.namespace === 'wxdify')).toBe(true);
    expect(prod.find((d) => d.kind === 'HorizontalPodAutoscaler')!.spec.minReplicas).toBe(3);
  });

  it('probes liveness on /healthz and readiness on /readyz in every Deployment', () => {
    expect(DEPLOYMENTS.map((d) => d.obj.metadata.name).sort()).toEqual(['wxdify-ingress', 'wxdify-worker']);
    for (const { file, obj } of DEPLOYMENTS) {
      for (const c of obj.spec.template.spec.containers as Manifest[]) {
        expect(c.livenessProbe?.httpGet?.path, file).toBe('/healthz');
        expect(c.readinessProbe?.httpGet?.path, file).toBe('/readyz');
      }
    }
  });

  it('gives every container resource requests and limits for CPU and memory', () => {
    for (const { file, obj } of DEPLOYMENTS) {
      for (const c of obj.spec.template.spec.containers as Manifest[]) {
        for (const kind of ['requests', 'limits'] as const) {
          expect(Object.keys(c.resources?.[kind] ?? {}).sort(), `${file} ${c.name} ${kind}`).toEqual(['cpu', 'memory']);
        }
      }
    }
  });

  it('probes /healthz and /readyz on the port each process listens on', () => {
    for (const [name, port] of [['wxdify-ingress', 8080], ['wxdify-worker', 8081]] as const) {
      const { c, port: resolvePort } = containerOf(name);
      expect(envOf(c, 'PORT'), name).toBe(String(port));
      expect(c.livenessProbe.httpGet.path, name).toBe('/healthz');
      expect(c.startupProbe.httpGet.path, name).toBe('/healthz');
      expect(c.readinessProbe.httpGet.path, name).toBe('/readyz');
      for (const p of [c.livenessProbe, c.readinessProbe, c.startupProbe]) expect(resolvePort(p.httpGet.port), name).toBe(port);
      expect(c.envFrom).toEqual([{ configMapRef: { name: 'wxdify-config' } }, { secretRef: { name: 'wxdify-secrets' } }]);
    }
    const svc = find('Service', 'wxdify-ingress');
    expect(svc.spec.ports[0].port).toBe(80);
    expect(containerOf('wxdify-ingress').port(svc.spec.ports[0].targetPort)).toBe(8080);
  });

  it('gives every Deployment a preStop sleep and a grace period covering it, the process shutdown and a margin', () => {
    const config = find('ConfigMap', 'wxdify-config').data as Record<string, string>;
    // How long each process may take after SIGTERM before it exits on its own (apps/*/src/main.ts):
    // the ingress within 10 s; the worker SHUTDOWN_GRACE_MS for running jobs + 10 s hard deadline.
    const graceMs = Number(config.SHUTDOWN_GRACE_MS);
    expect(graceMs).toBe(45_000);
    const shutdownMs: Record<string, number> = { 'wxdify-ingress': 10_000, 'wxdify-worker': graceMs + 10_000 };
    const MARGIN_MS = 5000;
    for (const { obj } of DEPLOYMENTS) {
      const name = obj.metadata.name as string;
      const spec = obj.spec.template.spec;
      const c = spec.containers[0];
      // SHUTDOWN_GRACE_MS comes from the ConfigMap only, so the grace period checked here is the one in effect.
      expect(envOf(c, 'SHUTDOWN_GRACE_MS'), name).toBeUndefined();
      expect(c.envFrom, name).toContainEqual({ configMapRef: { name: 'wxdify-config' } });
      const preStop = c.lifecycle?.preStop?.sleep?.seconds as number;
      expect(preStop, name).toBeGreaterThanOrEqual(5);
      expect(shutdownMs[name], name).toBeDefined();
      expect(spec.terminationGracePeriodSeconds * 1000, name).toBeGreaterThanOrEqual(preStop * 1000 + shutdownMs[name]! + MARGIN_MS);
    }
    // The ingress's preStop outlasts endpoint removal in kube-proxy and ingress controllers.
    expect(find('Deployment', 'wxdify-ingress').spec.template.spec.containers[0].lifecycle.preStop.sleep.seconds).toBe(10);
  });

  it('runs every pod as non-root on a read-only root filesystem', () => {
    for (const { file, obj } of DEPLOYMENTS) {
      const spec = obj.spec.template.spec;
      expect(spec.securityContext.runAsNonRoot, file).toBe(true);
      expect(spec.containers[0].securityContext.readOnlyRootFilesystem, file).toBe(true);
    }
  });

  it('points KEDA at the worker Deployment and the answer queue wait list under QUEUE_PREFIX, with credentials from the Secret', () => {
    const so = find('ScaledObject', 'wxdify-worker');
    // KEDA's scaleTargetRef defaults to apps/v1 Deployment; it must be the one running the worker entry.
    expect(so.spec.scaleTargetRef.kind ?? 'Deployment').toBe('Deployment');
    expect(find('Deployment', so.spec.scaleTargetRef.name).spec.template.spec.containers[0].command).toEqual(['node', 'apps/worker/dist/main.js']);
    const trigger = so.spec.triggers[0];
    expect(trigger.type).toBe('redis');
    expect(trigger.metadata.listName).toMatch(/:answer:wait$/);
    expect(trigger.metadata.listName).toBe(`${find('ConfigMap', 'wxdify-config').data.QUEUE_PREFIX}:answer:wait`);
    expect(trigger.metadata.activationListLength).toBe('1');
    expect(so.spec.minReplicaCount).toBeGreaterThanOrEqual(1);
    expect(so.spec.cooldownPeriod).toBe(300);
    const auth = find('TriggerAuthentication', trigger.authenticationRef.name);
    const secret = parseDocs(readFileSync(join(DEPLOY, 'base/secret.example.yaml'), 'utf8'), 'secret')[0]!.obj;
    for (const ref of auth.spec.secretTargetRef) {
      expect(ref.name).toBe(secret.metadata.name);
      expect(Object.keys(secret.stringData)).toContain(ref.key);
    }
  });

  it('never puts both an HPA and a ScaledObject on one Deployment, and targets only existing ones', () => {
    const hpaTargets = BASE.filter((d) => d.obj.kind === 'HorizontalPodAutoscaler').map((d) => d.obj.spec.scaleTargetRef.name);
    const kedaTargets = BASE.filter((d) => d.obj.kind === 'ScaledObject').map((d) => d.obj.spec.scaleTargetRef.name);
    expect(hpaTargets).toEqual(['wxdify-ingress']);
    expect(kedaTargets).toEqual(['wxdify-worker']);
    expect(hpaTargets.filter((t) => kedaTargets.includes(t))).toEqual([]);
    for (const t of [...hpaTargets, ...kedaTargets]) expect(() => find('Deployment', t)).not.toThrow();
  });

  it('scales the ingress with an HPA on CPU utilisation', () => {
    const hpa = find('HorizontalPodAutoscaler', 'wxdify-ingress');
    expect(hpa.spec.scaleTargetRef).toEqual({ apiVersion: 'apps/v1', kind: 'Deployment', name: 'wxdify-ingress' });
    const cpu = (hpa.spec.metrics as Manifest[]).filter((m) => m.type === 'Resource' && m.resource.name === 'cpu');
    expect(cpu).toHaveLength(1);
    expect(cpu[0]!.resource.target.type).toBe('Utilization');
    expect(hpa.spec.minReplicas).toBeGreaterThanOrEqual(2);
  });

  it('covers every Deployment with exactly one PodDisruptionBudget', () => {
    const pdbs = BASE.filter((d) => d.obj.kind === 'PodDisruptionBudget').map((d) => d.obj);
    for (const { obj } of DEPLOYMENTS) {
      const labels = obj.spec.template.metadata.labels as Record<string, string>;
      const covering = pdbs.filter((p) => Object.entries(p.spec.selector.matchLabels as Record<string, string>).every(([k, v]) => labels[k] === v));
      // None leaves drains unbounded; two make the eviction API refuse to evict the pod at all.
      expect(covering.map((p) => p.metadata.name), obj.metadata.name).toHaveLength(1);
    }
  });

  it('selects pods that exist from every Service and PodDisruptionBudget', () => {
    const podLabels = DEPLOYMENTS.map((d) => d.obj.spec.template.metadata.labels as Record<string, string>);
    const matches = (sel: Record<string, string>) =>
      podLabels.some((labels) => Object.entries(sel).every(([k, v]) => labels[k] === v));
    for (const { obj } of BASE.filter((d) => d.obj.kind === 'PodDisruptionBudget')) {
      expect(matches(obj.spec.selector.matchLabels), obj.metadata.name).toBe(true);
    }
    expect(matches(find('Service', 'wxdify-ingress').spec.selector)).toBe(true);
  });
});

describe('operator documentation', () => {
  it('writes a Redis Cluster URL one way everywhere: redis+cluster://, as the README does', () => {
    const docs = ['README.md', 'deploy/README.md', 'deploy/base/secret.example.yaml', '.env.example'];
    const texts = docs.map((f) => readFileSync(join(ROOT, f), 'utf8'));
    expect(docs.filter((_, i) => /[?&]cluster=1/.test(texts[i]!))).toEqual([]);
    for (const f of ['README.md', 'deploy/README.md', 'deploy/base/secret.example.yaml']) {
      expect(texts[docs.indexOf(f)], f).toContain('redis+cluster://');
    }
  });

  it('says a job cut off at shutdown is handed back without using an attempt, not failed and retried', () => {
    for (const f of ['deploy/README.md', 'deploy/base/worker-deployment.yaml', 'README.md']) {
      const text = readFileSync(join(ROOT, f), 'utf8').replace(/\s*#\s*|\s+/g, ' ');
      expect(text, f).toMatch(/handed back to the queue without using one of (its|their) attempts/);
      expect(text, f).not.toMatch(/BullMQ retries (it|them|the job)/i);
    }
  });
});

describe('docker-compose.yml and Dockerfile', () => {
  const compose = parseYaml(readFileSync(join(ROOT, 'docker-compose.yml'), 'utf8')) as Manifest;
  const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8')
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));

  it('runs redis without eviction, with AOF on a named volume, and a health check', () => {
    expect(Object.keys(compose.services).sort()).toEqual(['ingress', 'redis', 'worker']);
    const { redis } = compose.services;
    const redisCmd = [redis.command].flat().join(' ');
    expect(redisCmd).toMatch(/--maxmemory-policy noeviction/);
    expect(redisCmd).toMatch(/--appendonly yes/);
    expect([redis.healthcheck?.test].flat().join(' ')).toMatch(/redis-cli.*ping/);
    // A named volume on Redis's data directory: `docker compose down` keeps the queues and conversations.
    const volume = (redis.volumes as string[]).map((v) => v.split(':')).find(([, target]) => target === '/data');
    expect(volume).toBeDefined();
    expect(Object.keys(compose.volumes ?? {})).toContain(volume![0]);
  });

  it('publishes the ingress on 8080 with a readiness health check, after Redis is healthy', () => {
    const { ingress } = compose.services;
    expect(ingress.ports).toEqual(['8080:8080']);
    expect(ingress.environment.PORT).toBe('8080');
    expect([ingress.healthcheck?.test].flat().join(' ')).toContain('http://127.0.0.1:8080/readyz');
    expect(ingress.depends_on.redis.condition).toBe('service_healthy');
    // The ingress exits within 10 s of SIGTERM; docker's SIGKILL must come later.
    expect(Number(/^(\d+)s$/.exec(ingress.stop_grace_period)?.[1])).toBeGreaterThanOrEqual(15);
  });

  it('keeps the worker scalable (no container name, no host port) with a stop grace covering SHUTDOWN_GRACE_MS', () => {
    const { worker } = compose.services;
    expect([worker.command].flat().join(' ')).toBe('node apps/worker/dist/main.js');
    expect(worker.ports).toBeUndefined();
    expect(worker.container_name).toBeUndefined();
    expect(worker.depends_on.redis.condition).toBe('service_healthy');
    expect([worker.healthcheck?.test].flat().join(' ')).toContain('http://127.0.0.1:8081/readyz');
    // Docker has no preStop: the grace covers SHUTDOWN_GRACE_MS plus the worker's own 10 s deadline.
    const graceMs = Number(worker.environment.SHUTDOWN_GRACE_MS);
    expect(graceMs).toBeGreaterThan(0);
    expect(Number(/^(\d+)s$/.exec(worker.stop_grace_period)?.[1]) * 1000).toBeGreaterThanOrEqual(graceMs + 10_000);
  });

  it('reads the configuration from an env file, documented by .env.example', () => {
    for (const name of ['ingress', 'worker']) {
      expect([compose.services[name].env_file].flat(), name).toEqual(['.env']);
    }
    const example = readFileSync(join(ROOT, '.env.example'), 'utf8');
    for (const key of ['WECHAT_APP_ID', 'WECHAT_TOKEN', 'DIFY_API_KEY']) expect(example).toMatch(new RegExp(`^${key}=`, 'm'));
  });

  it('builds in stages from node:24 and runs as a non-root user with an exec-form CMD', () => {
    const froms = dockerfile.filter((l) => /^FROM\s/i.test(l));
    expect(froms.length).toBeGreaterThanOrEqual(2);
    for (const f of froms) expect(f).toMatch(/^FROM node:24[-.\w]* AS \w+$/i);
    const stages = froms.map((f) => f.split(/\s+/).at(-1));
    for (const l of dockerfile.filter((x) => /^COPY\s+--from=/i.test(x))) {
      expect(stages.slice(0, -1), l).toContain(/--from=(\S+)/.exec(l)![1]);
    }
    const users = dockerfile.filter((l) => /^USER\s/i.test(l));
    expect(users).toHaveLength(1);
    expect(users[0]).not.toMatch(/^USER\s+(root|0)(:|$)/i);
    const cmd = dockerfile.filter((l) => /^CMD\s/i.test(l));
    expect(cmd).toEqual(['CMD ["node", "apps/ingress/dist/main.js"]']);
  });

  it('installs only production dependencies in the image it ships', () => {
    const last = dockerfile.slice(dockerfile.findLastIndex((l) => /^FROM\s/i.test(l)));
    const installs = last.filter((l) => /^RUN\s.*\bnpm (ci|install)\b/.test(l));
    expect(installs).toHaveLength(1);
    expect(installs[0]).toMatch(/--omit=dev/);
    // Nothing from the build stage but compiled output (its node_modules holds the dev tools).
    for (const l of last.filter((x) => /^COPY\s+--from=/i.test(x))) expect(l, l).toMatch(/\/dist\s+\S+\/dist$/);
  });

  it('copies only paths that exist in the repository and that .dockerignore lets into the build context', () => {
    const ignore = readFileSync(join(ROOT, '.dockerignore'), 'utf8').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
    // Docker excludes a path when the last matching pattern (on it or a parent) is not a `!` exception.
    const ignored = (path: string) => {
      const parts = path.split('/');
      const candidates = parts.map((_, i) => parts.slice(0, i + 1).join('/'));
      let out = false;
      for (const pattern of ignore) {
        const negated = pattern.startsWith('!');
        const glob = negated ? pattern.slice(1) : pattern;
        if (candidates.some((c) => matchesGlob(c, glob))) out = !negated;
      }
      return out;
    };
    const sources = dockerfile
      .filter((l) => /^COPY\s/i.test(l) && !/--from=/i.test(l))
      .flatMap((l) => l.split(/\s+/).slice(1).filter((a) => !a.startsWith('--')).slice(0, -1));
    expect(sources.length).toBeGreaterThan(5);
    for (const src of sources) {
      expect(existsSync(join(ROOT, src)), src).toBe(true);
      expect(ignored(src), `${src} is excluded by .dockerignore`).toBe(false);
    }
    // The check itself: these are kept out of the context.
    expect(['apps/worker/node_modules', 'test', '.env', 'README.md'].map(ignored)).toEqual([true, true, true, true]);
  });
});
