# syntax=docker/dockerfile:1
#
# One image, two processes. The default command runs the ingress; the worker is the same image
# started with `node apps/worker/dist/main.js` (docker-compose.yml, deploy/base/worker-deployment.yaml).
#
#   docker build -t wxdify .
#   docker run --env-file .env -e REDIS_URL=redis://host:6379 -p 8080:8080 wxdify
#   docker run --env-file .env -e REDIS_URL=redis://host:6379 wxdify node apps/worker/dist/main.js
#
# Why these choices:
# - bookworm-slim rather than alpine: glibc, so the prebuilt msgpackr-extract binary that BullMQ
#   pulls in is used as-is and nothing is compiled.
# - --ignore-scripts: no dependency needs an install script (msgpackr-extract's only builds from
#   source, and its prebuilt binary comes as a separate optional package), and slim has no compiler.
# - The runtime stage installs production dependencies itself rather than copying a pruned
#   node_modules, so npm's workspace symlinks (@wxdify/core -> packages/core) are laid out right.
# - USER is numeric (1000 is the image's `node` user): Kubernetes' runAsNonRoot can only verify a
#   numeric user.
# - Exec-form CMD and no shell: the base image's entrypoint execs node, so node is PID 1, receives
#   SIGTERM itself and runs the graceful shutdown (readiness flip, drain, worker grace).

FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
COPY packages/core/package.json packages/core/
COPY apps/ingress/package.json apps/ingress/
COPY apps/worker/package.json apps/worker/
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.base.json ./
COPY packages/core packages/core
COPY apps/ingress apps/ingress
COPY apps/worker apps/worker
RUN npm run build

FROM node:24-bookworm-slim AS runtime
ENV NODE_ENV=production
# A small young generation: V8 sizes it from the machine's memory, and each process holds many
# small, short-lived I/O objects; 4 MB semi-spaces cut memory by a third and GC pauses with it
# (npm run bench). The npm start scripts pass the same flag.
ENV NODE_OPTIONS=--max-semi-space-size=4
WORKDIR /app
COPY package.json package-lock.json ./
COPY packages/core/package.json packages/core/
COPY apps/ingress/package.json apps/ingress/
COPY apps/worker/package.json apps/worker/
RUN npm ci --omit=dev --workspaces --include-workspace-root --ignore-scripts --no-audit --no-fund \
  && npm cache clean --force
COPY --from=build /app/packages/core/dist packages/core/dist
COPY --from=build /app/apps/ingress/dist apps/ingress/dist
COPY --from=build /app/apps/worker/dist apps/worker/dist
# Files stay owned by root and read-only for the process (readOnlyRootFilesystem in Kubernetes).
USER 1000:1000
# 8080: ingress (webhook, /healthz, /readyz, /metrics, /admin/queues); 8081: worker health server.
EXPOSE 8080 8081
CMD ["node", "apps/ingress/dist/main.js"]
