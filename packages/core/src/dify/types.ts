// Dify Service API vocabulary: app modes, streaming events and what the client hands back.
// Event shapes follow https://docs.dify.ai/en/api-reference (streaming guide and openapi_service.json);
// fields vary between Dify releases, so everything a release may omit is optional.

/** The `mode` `GET /info` reports; it picks the endpoint. */
export type DifyAppMode = 'chat' | 'agent-chat' | 'advanced-chat' | 'workflow' | 'completion';

/** The app type as configured (the names Dify's studio shows); `auto` asks `GET /info`. */
export type DifyAppType = 'chat' | 'agent' | 'chatflow' | 'workflow' | 'completion' | 'auto';

/** Configured app type -> Dify app mode. */
export const APP_TYPE_MODES = {
  chat: 'chat',
  agent: 'agent-chat',
  chatflow: 'advanced-chat',
  workflow: 'workflow',
  completion: 'completion',
} as const satisfies Record<Exclude<DifyAppType, 'auto'>, DifyAppMode>;

/** A file sent with a query (`files[]` of `/chat-messages`, `/completion-messages`, `/workflows/run`). */
export interface DifyFileInput {
  type: 'image' | 'audio' | 'document' | 'video' | 'custom';
  transfer_method: 'remote_url' | 'local_file';
  url?: string;
  upload_file_id?: string;
}

/** Dify's file object, as found in `message_end.files`, workflow outputs and `workflow_finished.data.files`. */
export interface DifyFileObject {
  dify_model_identity?: '__dify__file__';
  id?: string | null;
  related_id?: string | null;
  type?: string;
  transfer_method?: string;
  filename?: string;
  extension?: string | null;
  mime_type?: string | null;
  size?: number;
  url?: string | null;
  remote_url?: string | null;
  upload_file_id?: string | null;
}

/** Token usage in `message_end.metadata.usage` (prices are strings, latency seconds). */
export interface DifyUsage {
  prompt_tokens?: number;
  completion_tokens?: number;
  total_tokens?: number;
  total_price?: string;
  currency?: string;
  latency?: number;
}

/** Top-level fields of chat-family events (completion events have no `conversation_id`). */
interface ChatEnvelope {
  conversation_id?: string;
  message_id?: string | null;
  created_at?: number;
  task_id?: string;
}

/** Top-level fields of workflow events (chatflow adds the chat envelope too). */
interface WorkflowEnvelope extends ChatEnvelope {
  workflow_run_id?: string;
}

/** `message`: a delta of the answer (New Agent's closing `message` carries the whole answer). */
export interface ChatMessageEvent extends ChatEnvelope {
  event: 'message';
  id?: string;
  answer: string;
  from_variable_selector?: string[] | null;
}

/** `agent_message`: answer delta of agent apps. */
export interface AgentMessageEvent extends ChatEnvelope {
  event: 'agent_message';
  id?: string;
  answer: string;
}

/** `agent_thought`: one agent step; the same `id` is sent again as the step progresses. */
export interface AgentThoughtEvent extends ChatEnvelope {
  event: 'agent_thought';
  id: string;
  position?: number;
  thought?: string;
  observation?: string;
  tool?: string;
  tool_input?: string;
  message_files?: string[];
}

/** `message_file`: a file the assistant produced, or (a Dify quirk) a text chunk carrying `answer` and no `url`. */
export interface MessageFileEvent extends ChatEnvelope {
  event: 'message_file';
  id?: string;
  type?: string;
  belongs_to?: 'user' | 'assistant';
  url?: string;
  answer?: string;
}

/** `message_replace`: the full replacement of the answer so far (output moderation). */
export interface MessageReplaceEvent extends ChatEnvelope {
  event: 'message_replace';
  answer: string;
  reason?: string;
}

/** `message_end`: the message is complete. */
export interface MessageEndEvent extends ChatEnvelope {
  event: 'message_end';
  id?: string;
  metadata?: { usage?: DifyUsage; retriever_resources?: unknown[] };
  files?: DifyFileObject[] | null;
}

/** `tts_message` / `tts_message_end`: base64 MP3 chunks when auto-play is on. */
export interface TtsMessageEvent extends ChatEnvelope {
  event: 'tts_message' | 'tts_message_end';
  audio: string;
}

/** `workflow_started`. */
export interface WorkflowStartedEvent extends WorkflowEnvelope {
  event: 'workflow_started';
  data: { id: string; workflow_id?: string; inputs?: Record<string, unknown>; created_at?: number };
}

/** Status of a workflow run or node. */
export type WorkflowRunStatus = 'running' | 'succeeded' | 'failed' | 'partial-succeeded' | 'stopped' | 'paused' | 'exception';

/** `node_started` / `node_finished`. */
export interface NodeEvent extends WorkflowEnvelope {
  event: 'node_started' | 'node_finished';
  data: {
    id: string;
    node_id: string;
    node_type?: string;
    title?: string;
    status?: WorkflowRunStatus;
    outputs?: Record<string, unknown> | null;
    error?: string | null;
    files?: DifyFileObject[] | null;
  };
}

/** `text_chunk`: streamed text of a workflow's End node. */
export interface TextChunkEvent extends WorkflowEnvelope {
  event: 'text_chunk';
  data: { text: string; from_variable_selector?: string[] | null };
}

/** `workflow_finished`: the run is over; `outputs` holds the result of a workflow app. */
export interface WorkflowFinishedEvent extends WorkflowEnvelope {
  event: 'workflow_finished';
  data: {
    id: string;
    workflow_id?: string;
    status: WorkflowRunStatus;
    outputs?: Record<string, unknown> | null;
    error?: string | null;
    elapsed_time?: number;
    total_tokens?: number;
    files?: DifyFileObject[] | null;
  };
}

/** `workflow_paused`: a human-input node stopped the run; the stream ends here. */
export interface WorkflowPausedEvent extends WorkflowEnvelope {
  event: 'workflow_paused';
  data: { outputs?: Record<string, unknown> | null; status?: 'paused' };
}

/** The in-stream `error` event (HTTP status already 200). `message` can be null; it has no `task_id`. */
export interface StreamErrorEvent extends WorkflowEnvelope {
  event: 'error';
  status?: number;
  code?: string;
  message: string | null;
}

/** Every documented event the client reads, by its `event` name. */
export interface DifyEventMap {
  message: ChatMessageEvent;
  agent_message: AgentMessageEvent;
  agent_thought: AgentThoughtEvent;
  message_file: MessageFileEvent;
  message_replace: MessageReplaceEvent;
  message_end: MessageEndEvent;
  tts_message: TtsMessageEvent;
  tts_message_end: TtsMessageEvent;
  workflow_started: WorkflowStartedEvent;
  node_started: NodeEvent;
  node_finished: NodeEvent;
  text_chunk: TextChunkEvent;
  workflow_finished: WorkflowFinishedEvent;
  workflow_paused: WorkflowPausedEvent;
  error: StreamErrorEvent;
}

/** A documented event name. */
export type DifyEventName = keyof DifyEventMap;

/** A documented event. */
export type DifyStreamEvent = DifyEventMap[DifyEventName];

/** What the SSE reader yields: any JSON object with a string `event`. Unknown names are kept, never fatal. */
export interface RawDifyEvent {
  event: string;
  [field: string]: unknown;
}

/** The error envelope of every non-2xx answer: `{ code, message, status }`. */
export interface DifyErrorBody {
  code?: string;
  message?: string | null;
  status?: number;
}

/** `GET /info`. `mode` may also be `agent` (New Agent, beta), which the client routes like `agent-chat`. */
export interface DifyAppInfo {
  name: string;
  description?: string;
  tags?: string[];
  mode: DifyAppMode | 'agent';
  author_name?: string;
}

/** `GET /parameters`, the parts the relay reads. */
export interface DifyParameters {
  opening_statement?: string;
  user_input_form?: Array<Record<string, { variable?: string; label?: string; required?: boolean }>>;
  speech_to_text?: { enabled?: boolean };
  text_to_speech?: { enabled?: boolean };
  file_upload?: {
    enabled?: boolean;
    allowed_file_types?: string[];
    /** `remote_url`, `local_file`: how files may reach the app (newer file config). */
    allowed_file_upload_methods?: string[];
    image?: { enabled?: boolean; number_limits?: number; transfer_methods?: string[] };
  };
  system_parameters?: Record<string, number>;
}

/** Where a file of an answer came from. */
export type DifyAnswerFileSource = 'message_file' | 'message_end' | 'workflow_output';

/** A file in an answer. `url` is absolute (relative Dify URLs are resolved against its origin) and expires in ~5 min. */
export interface DifyAnswerFile {
  url: string;
  type?: string;
  mimeType?: string;
  filename?: string;
  from: DifyAnswerFileSource;
}

/** One complete answer of Dify. */
export interface DifyAnswer {
  /** The whole answer text, after `message_replace`; markdown links are left in place. */
  text: string;
  conversationId?: string;
  messageId?: string;
  taskId?: string;
  files: DifyAnswerFile[];
  /** True when the stored conversation was gone and the answer starts a new one. */
  conversationReset: boolean;
  /** True when the stream ended (or broke) after some text but before any terminal event. */
  truncated: boolean;
  /** Milliseconds from `ask` to the first data event of the answering request. */
  firstEventMs?: number;
  totalMs: number;
}
