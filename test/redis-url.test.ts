import { Cluster, Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { createRedis, isClusterUrl } from '@wxdify/core';

/** Opens a client on a port nothing listens on and closes it at once: only its options are read. */
function optionsOf(url: string) {
  const client = createRedis(url);
  client.disconnect();
  return client;
}

describe('REDIS_URL forms', () => {
  it('seeds a Redis Cluster from redis+cluster:// and ?cluster=1, without TLS', () => {
    expect(isClusterUrl('redis+cluster://127.0.0.1:1')).toBe(true);
    expect(isClusterUrl('redis://127.0.0.1:1?cluster=1')).toBe(true);
    expect(isClusterUrl('redis://127.0.0.1:1')).toBe(false);
    const client = optionsOf('redis+cluster://:p%40ss@127.0.0.1:1');
    expect(client).toBeInstanceOf(Cluster);
    const opts = (client as Cluster).options.redisOptions!;
    expect(opts.password).toBe('p@ss');
    expect(opts.tls).toBeUndefined();
  });

  it('opens a TLS cluster for rediss+cluster:// and rediss://…?cluster=1, with user and password', () => {
    for (const url of ['rediss+cluster://app:secret@127.0.0.1:1', 'rediss://app:secret@127.0.0.1:1?cluster=1']) {
      expect(isClusterUrl(url)).toBe(true);
      const client = optionsOf(url) as Cluster;
      expect(client).toBeInstanceOf(Cluster);
      expect(client.options.redisOptions).toMatchObject({ username: 'app', password: 'secret', tls: { servername: '127.0.0.1' } });
      expect(client.options.dnsLookup).toBeTypeOf('function');
    }
  });

  it('opens a single Redis for a plain URL', () => {
    expect(optionsOf('redis://127.0.0.1:1/2')).toBeInstanceOf(Redis);
  });
});
