// Summarizes V8 CPU profiles written by `BENCH_CPU_PROF=1 npm run bench`: self time by package
// (or Node internals / our code / GC) and the functions with the most self time.
//   node --import tsx scripts/bench/profile-summary.ts <dir or .cpuprofile>... [--top 25]
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

const args = process.argv.slice(2);
const topIdx = args.indexOf('--top');
const top = topIdx >= 0 ? Number(args.splice(topIdx, 2)[1]) : 25;
const files = args.flatMap((a) => (statSync(a).isDirectory() ? readdirSync(a).filter((f) => f.endsWith('.cpuprofile')).map((f) => join(a, f)) : [a]));
for (const file of files) summarize(file);

function summarize(file: string): void {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  profile.samples.forEach((id, i) => self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)));
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  const idle = [...self].filter(([id]) => byId.get(id)?.callFrame.functionName === '(idle)').reduce((a, [, t]) => a + t, 0);
  const busy = total - idle;
  // Node internals and native code are charged to the nearest caller that is a package or our code.
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const owner = (id: number): string => {
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const f = byId.get(cur)!.callFrame;
      const cat = category(f.url, f.functionName);
      if (!cat.startsWith('node:') && cat !== '(native)') return cat;
    }
    return category(byId.get(id)!.callFrame.url, byId.get(id)!.callFrame.functionName);
  };
  const byCategory = new Map<string, number>();
  const byOwner = new Map<string, number>();
  const byFunction = new Map<string, number>();
  for (const [id, us] of self) {
    const frame = byId.get(id)!.callFrame;
    if (frame.functionName === '(idle)') continue;
    const cat = category(frame.url, frame.functionName);
    byCategory.set(cat, (byCategory.get(cat) ?? 0) + us);
    const own = owner(id);
    byOwner.set(own, (byOwner.get(own) ?? 0) + us);
    const fn = `${frame.functionName || '(anonymous)'} ${shortUrl(frame.url)}:${frame.lineNumber + 1}`;
    byFunction.set(fn, (byFunction.get(fn) ?? 0) + us);
  }
  const pct = (us: number) => `${((100 * us) / busy).toFixed(1).padStart(5)}%`;
  console.log(`\n# ${basename(file)}: ${(busy / 1e6).toFixed(2)} s busy of ${(total / 1e6).toFixed(2)} s sampled`);
  console.log('\nself time by package:');
  for (const [cat, us] of [...byCategory].sort((a, b) => b[1] - a[1]).slice(0, 20)) console.log(`  ${pct(us)}  ${cat}`);
  console.log('\nself time by package, Node internals and native code charged to their caller:');
  for (const [cat, us] of [...byOwner].sort((a, b) => b[1] - a[1]).slice(0, 20)) console.log(`  ${pct(us)}  ${cat}`);
  console.log(`\ntop ${top} functions by self time:`);
  for (const [fn, us] of [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`  ${pct(us)}  ${fn}`);
}

function category(url: string, fn: string): string {
  if (!url) return fn.startsWith('(') ? fn : '(native)';
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (pkg) return pkg[1]!;
  if (url.startsWith('node:')) return `node:${url.slice(5).split('/').slice(0, 2).join('/')}`;
  const ours = /(apps\/[^/]+|packages\/[^/]+|scripts|test)\//.exec(url);
  return ours ? ours[1]! : url;
}

function shortUrl(url: string): string {
  return url.replace(/^file:\/\/.*?node_modules\//, '').replace(/^file:\/\/.*?\/(apps|packages|scripts|test)\//, '$1/');
}
