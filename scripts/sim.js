// `npm run sim -- --url http://host:port/wechat --token T [--aes-key K --app-id A] "text"`
// Sends a signed message exactly as WeChat does (three attempts on WeChat's clock, encrypted when
// a key is given) and prints what the follower would see, and when. Check a deployment with it
// before pointing WeChat at it.
import { randomInt } from 'node:crypto';
import { parseArgs } from 'node:util';
import { WeChatSimulator } from '@wxdify/core';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    url: { type: 'string' },
    token: { type: 'string' },
    'aes-key': { type: 'string' },
    'app-id': { type: 'string' },
    mode: { type: 'string' },
    from: { type: 'string', default: 'o_simulator_user' },
    window: { type: 'string', default: '5000' },
    help: { type: 'boolean', short: 'h' },
  },
});

if (values.help || !values.url || !values.token || positionals.length === 0) {
  console.log(`usage: npm run sim -- --url http://host:port/wechat --token TOKEN [--aes-key KEY --app-id APPID] [--mode plain|compatible|safe] [--from OPENID] "text"

  Sends "text" as the follower OPENID, the way WeChat does: up to three attempts 5 s apart,
  each cut at 5 s, signed with TOKEN, and AES-encrypted (safe mode) when --aes-key is given.
  Prints every attempt and what the follower would see.`);
  process.exit(values.help ? 0 : 2);
}

const mode = values.mode ?? (values['aes-key'] ? 'safe' : 'plain');
const sim = new WeChatSimulator({
  url: values.url,
  token: values.token,
  appId: values['app-id'],
  encodingAesKey: values['aes-key'],
  mode,
});
const windowMs = Number(values.window);
const text = positionals.join(' ');
const msgId = String(BigInt(Date.now()) * 1000n + BigInt(randomInt(1000)));
console.log(`${mode} mode, from ${values.from}, MsgId ${msgId}: ${JSON.stringify(text)}`);

const result = await sim.deliver(sim.messageXml(values.from, { MsgType: 'text', Content: text, MsgId: msgId }), windowMs);
for (const [i, a] of result.attempts.entries()) {
  const what = a.status === 0 ? (a.error === 'timeout' ? 'no answer in time (cut by WeChat)' : `no answer (${a.error})`) : `HTTP ${a.status}${a.body && !a.reply ? ` ${JSON.stringify(a.body.slice(0, 80))}` : ''}`;
  console.log(`  t+${(a.startedAt / 1000).toFixed(2)}s attempt ${i + 1}: ${what} after ${(a.ms / 1000).toFixed(2)} s`);
}
const accepted = result.accepted;
if (!accepted) {
  console.log('\nThe follower sees: WeChat\'s "该公众号暂时无法提供服务，请稍后再试" (no attempt answered in time).');
  process.exit(1);
}
const at = ((accepted.startedAt + accepted.ms) / 1000).toFixed(2);
if (!accepted.reply) {
  console.log(`\nThe follower sees nothing now (the server said ${JSON.stringify(accepted.body || '')} at t+${at}s); a late answer may follow as a push.`);
} else if (accepted.reply.MsgType === 'text') {
  console.log(`\nThe follower sees, at t+${at}s:\n${accepted.reply.Content}`);
} else {
  console.log(`\nThe follower sees a ${accepted.reply.MsgType} message at t+${at}s: ${JSON.stringify(accepted.reply)}`);
}
