/** Languages of the service's own messages (CONTRACT.md `LANGUAGE`). */
export const LANGUAGES = ['zh_Hans', 'en_US', 'ja_JP', 'pt_BR'] as const;

/** One of {@link LANGUAGES}. */
export type Language = (typeof LANGUAGES)[number];

/** Every text the service writes itself; `{name}` marks a placeholder. */
export interface Messages {
  /** Passive reply when the answer misses WeChat's window; it follows as a push. */
  timeout: string;
  /** Interactive waiting: the follower may reply 1 `{left}` more times. */
  continueWaiting: string;
  /** Reply to 1 when the answer is not ready yet and no more waiting is offered. */
  stillComing: string;
  /** Reply to 1 when nothing is waiting for the follower. */
  noPending: string;
  /** Reply after the conversation was reset. */
  cleared: string;
  /** Tail of a part when `{count}` more parts are held back. */
  moreParts: string;
  difyError: string;
  difyTimeout: string;
  unsupported: string;
  /** Sent to Dify as the user's text when a video arrives. */
  videoNote: string;
  voiceUnavailable: string;
  /** Sent to Dify as the user's text with an image `{url}`. */
  imageNote: string;
  /** Sent to Dify for a location: `{label}`, latitude `{x}`, longitude `{y}` (WeChat's Location_X/Y). */
  locationNote: string;
  /** Sent to Dify for a shared link: `{title}`, `{description}`, `{url}`. */
  linkNote: string;
  /** Label of the link to an answer image that could not be sent as an image message. */
  imageLink: string;
  /** Label of the link to a file of the answer that has no name. */
  fileLink: string;
  /** Subscribe greeting when none is configured. */
  welcome: string;
  /** Reply while the follower's previous message is still being answered. */
  busy: string;
}

/** Key of a message. */
export type MessageKey = keyof Messages;

/** Parameters of the messages that have placeholders; the others take none. */
export interface MessageParams {
  continueWaiting: { left: number };
  moreParts: { count: number };
  imageNote: { url: string };
  locationNote: { label: string; x: number | string; y: number | string };
  linkNote: { title: string; description: string; url: string };
}

/** The catalogue; the compiler checks that every language has every key. */
export const MESSAGES = {
  zh_Hans: {
    timeout: '内容生成耗时较长，请稍等...',
    continueWaiting: '生成答复中，继续等待请回复1（还可等待{left}次）',
    stillComing: '答复仍在生成中，请稍后回复1获取。',
    noPending: '当前没有等待发送给您的答复。',
    cleared: '对话已清空，我们重新开始吧。',
    moreParts: '还有{count}段内容，回复1查看下一段。',
    difyError: '抱歉，暂时无法回答，请稍后再试。',
    difyTimeout: '抱歉，这次回答超时了，请稍后再试。',
    unsupported: '抱歉，暂不支持这种类型的消息。',
    videoNote: '（用户发送了一段视频）',
    voiceUnavailable: '抱歉，没能识别这条语音，请发送文字。',
    imageNote: '（用户发送了一张图片：{url}）',
    locationNote: '（用户分享了位置：{label}，纬度 {x}，经度 {y}）',
    linkNote: '（用户分享了链接：{title}\n{description}\n{url}）',
    imageLink: '查看图片',
    fileLink: '查看文件',
    welcome: '感谢关注！有什么问题，直接发消息给我吧。',
    busy: '上一条消息还在回答中，请稍候。',
  },
  en_US: {
    timeout: 'This answer is taking a while; it will be sent shortly.',
    continueWaiting: 'Still generating the answer. Reply 1 to keep waiting ({left} more times).',
    stillComing: 'The answer is still being generated. Reply 1 a little later to get it.',
    noPending: 'Nothing is waiting for you right now.',
    cleared: 'The conversation has been cleared. Let us start a new one.',
    moreParts: 'There is more ({count} parts). Reply 1 for the next part.',
    difyError: 'Sorry, I cannot answer right now. Please try again later.',
    difyTimeout: 'Sorry, the answer took too long. Please try again later.',
    unsupported: 'Sorry, this type of message is not supported yet.',
    videoNote: '(The user sent a video.)',
    voiceUnavailable: 'Sorry, I could not understand the voice message. Please send text.',
    imageNote: '(The user sent an image: {url})',
    locationNote: '(The user shared a location: {label}, latitude {x}, longitude {y})',
    linkNote: '(The user shared a link: {title}\n{description}\n{url})',
    imageLink: 'View image',
    fileLink: 'View file',
    welcome: 'Thanks for following! Send me a message any time.',
    busy: 'Your previous message is still being answered. Please wait a moment.',
  },
  ja_JP: {
    timeout: '回答の生成に時間がかかっています。まもなくお送りします。',
    continueWaiting: '回答を生成中です。引き続きお待ちいただく場合は1を返信してください（あと{left}回）。',
    stillComing: '回答はまだ生成中です。少し後に1を返信すると受け取れます。',
    noPending: '現在お待ちの回答はありません。',
    cleared: '会話をリセットしました。新しい会話を始めましょう。',
    moreParts: '続きがあります（残り{count}件）。1を返信すると次をお送りします。',
    difyError: '申し訳ありません。ただいま回答できません。しばらくしてからもう一度お試しください。',
    difyTimeout: '申し訳ありません。回答がタイムアウトしました。しばらくしてからもう一度お試しください。',
    unsupported: '申し訳ありません。この種類のメッセージにはまだ対応していません。',
    videoNote: '（ユーザーが動画を送信しました）',
    voiceUnavailable: '申し訳ありません。音声メッセージを認識できませんでした。テキストで送信してください。',
    imageNote: '（ユーザーが画像を送信しました：{url}）',
    locationNote: '（ユーザーが位置情報を共有しました：{label}、緯度 {x}、経度 {y}）',
    linkNote: '（ユーザーがリンクを共有しました：{title}\n{description}\n{url}）',
    imageLink: '画像を見る',
    fileLink: 'ファイルを見る',
    welcome: 'フォローありがとうございます！お気軽にメッセージをお送りください。',
    busy: '前のメッセージにまだ回答中です。少々お待ちください。',
  },
  pt_BR: {
    timeout: 'A resposta está demorando um pouco; ela será enviada em breve.',
    continueWaiting: 'Gerando a resposta. Responda 1 para continuar esperando (mais {left} vezes).',
    stillComing: 'A resposta ainda está sendo gerada. Responda 1 daqui a pouco para recebê-la.',
    noPending: 'Não há nada esperando por você no momento.',
    cleared: 'A conversa foi apagada. Vamos começar uma nova.',
    moreParts: 'Há mais ({count} partes). Responda 1 para a próxima parte.',
    difyError: 'Desculpe, não consigo responder agora. Tente novamente mais tarde.',
    difyTimeout: 'Desculpe, a resposta demorou demais. Tente novamente mais tarde.',
    unsupported: 'Desculpe, este tipo de mensagem ainda não é suportado.',
    videoNote: '(O usuário enviou um vídeo.)',
    voiceUnavailable: 'Desculpe, não consegui entender a mensagem de voz. Envie um texto, por favor.',
    imageNote: '(O usuário enviou uma imagem: {url})',
    locationNote: '(O usuário compartilhou uma localização: {label}, latitude {x}, longitude {y})',
    linkNote: '(O usuário compartilhou um link: {title}\n{description}\n{url})',
    imageLink: 'Ver imagem',
    fileLink: 'Ver arquivo',
    welcome: 'Obrigado por seguir! Envie uma mensagem quando quiser.',
    busy: 'Sua mensagem anterior ainda está sendo respondida. Aguarde um momento.',
  },
} as const satisfies Record<Language, Messages>;
