import type { Request, Response } from 'got';
import { AppError } from '@wxdify/core';

/** A download that went past its byte limit (a declared Content-Length counts too). */
export class TooLargeError extends AppError {
  override readonly name = 'TooLargeError';
  readonly limit: number;
  constructor(limit: number, size: number | undefined) {
    super('internal', `download over ${limit} bytes${size === undefined ? '' : ` (${size})`}`);
    this.limit = limit;
  }
}

/** One downloaded body with the headers callers look at. */
export interface CappedBody {
  bytes: Buffer;
  contentType: string;
  status: number;
}

/**
 * Reads a got stream into memory, refusing more than `maxBytes` before reading it: a declared
 * Content-Length over the limit fails at once, an undeclared body is counted as it arrives. The
 * stream is destroyed when refused, so the connection is not kept busy.
 */
export async function readCapped(stream: Request, maxBytes: number): Promise<CappedBody> {
  const response = new Promise<Response>((resolve, reject) => {
    stream.once('response', resolve);
    stream.once('error', reject);
  });
  try {
    const res = await response;
    const declared = Number(res.headers['content-length']);
    if (Number.isFinite(declared) && declared > maxBytes) throw new TooLargeError(maxBytes, declared);
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > maxBytes) throw new TooLargeError(maxBytes, undefined);
      chunks.push(chunk);
    }
    return { bytes: Buffer.concat(chunks), contentType: String(res.headers['content-type'] ?? ''), status: res.statusCode };
  } finally {
    stream.destroy();
  }
}
