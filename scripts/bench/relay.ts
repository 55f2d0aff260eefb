// The baseline: what a user could run instead of the queue, a one-process relay with no Redis.
// It does only what every relay must: verify and parse the callback with the same core code, ask
// Dify with the same core client, shape the answer and reply passively. Conversation ids live in a
// Map (as in the seed plugin); logs go out at the production level, one line per request besides
// the Dify client's own.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import {
  RequestRejectedError,
  buildTextReplyXml,
  createDifyClient,
  createLogger,
  decodeRequest,
  encodeReply,
  loadConfig,
  messagesFor,
  shapeAnswer,
  splitText,
  type InboundMessage,
} from '@wxdify/core';

const config = loadConfig(process.env);
const account = config.accounts.get('default')!;
const logger = createLogger({ level: config.logLevel, name: 'relay' });
const tr = messagesFor(account);
const dify = createDifyClient({
  baseUrl: account.difyApiBaseUrl,
  apiKey: account.difyApiKey,
  appType: account.difyAppType,
  queryVariable: account.difyQueryVariable,
  idleTimeoutMs: account.difyIdleTimeoutMs,
  totalTimeoutMs: account.difyTotalTimeoutMs,
  logger,
});
const conversations = new Map<string, string>();
const difyOrigin = new URL(account.difyApiBaseUrl).origin;

const server = createServer((req, res) => {
  handle(req, res).catch((err: unknown) => {
    const status = (err instanceof RequestRejectedError ? err.status : undefined) ?? 500;
    if (status >= 500) logger.error({ err }, 'request failed');
    res.writeHead(status).end();
  });
});
server.keepAliveTimeout = 65_000;
server.listen(config.port ?? 8090, '127.0.0.1');

async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const started = Date.now();
  const url = new URL(req.url ?? '/', 'http://relay');
  if (url.pathname === '/healthz') {
    res.end('ok');
    return;
  }
  const body = await readBody(req);
  const { message, encrypted } = decodeRequest(account, Object.fromEntries(url.searchParams), body);
  const text = await answer(message);
  const xml = buildTextReplyXml({ toUser: message.fromUserName, fromUser: message.toUserName, content: text });
  res.writeHead(200, { 'content-type': 'application/xml' }).end(encodeReply(account, xml, encrypted));
  logger.info({ msgId: message.msgId, ms: Date.now() - started }, 'answered');
}

async function answer(message: InboundMessage): Promise<string> {
  const user = message.fromUserName;
  const query = message.kind === 'text' ? message.content : message.msgType;
  const reply = await dify.ask({
    query,
    user,
    inputs: { msgId: message.msgId ?? '', msgType: message.msgType, fromUser: user, createTime: message.createTime },
    conversationId: conversations.get(user),
    onConversationId: (id) => { conversations.set(user, id); },
  });
  const shaped = shapeAnswer(reply.text, { difyOrigin });
  return splitText(shaped.text || tr('difyError'))[0] ?? '';
}

async function readBody(req: IncomingMessage): Promise<string> {
  const parts: Buffer[] = [];
  for await (const part of req as AsyncIterable<Buffer>) parts.push(part);
  return Buffer.concat(parts).toString('utf8');
}

// exit at once: a --cpu-prof profile is written on exit, and nothing here needs draining
process.once('SIGTERM', () => process.exit(0));
