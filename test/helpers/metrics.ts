/** The Prometheus text a process serves at `/metrics`. */
export async function scrapeMetrics(baseUrl: string): Promise<string> {
  return (await fetch(`${baseUrl}/metrics`)).text();
}

/** One sample of a metric: the line named `name` holding every `k="v"` of `labels` (0 when absent). */
export function metricValue(text: string, name: string, labels: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && labels.split(',').every((kv) => l.includes(kv)));
  return line ? Number(line.split(' ').at(-1)) : 0;
}

/** How much a sample grew between two scrapes. */
export function metricDelta(before: string, after: string): (name: string, labels: string) => number {
  return (name, labels) => metricValue(after, name, labels) - metricValue(before, name, labels);
}
