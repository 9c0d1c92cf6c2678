# A plugin image for the e2e tests: the runner plus one plugin folder in /plugin,
# owned by root (read-only to the plugin's uid). The build context is the
# plugin's folder (the repository's .dockerignore leaves tests/ out):
#   docker build -f e2e/plugin.Dockerfile --build-arg RUNNER=<runner image> plugins/dice-roller
ARG RUNNER=precinct-runner
FROM ${RUNNER}
COPY . /plugin/
