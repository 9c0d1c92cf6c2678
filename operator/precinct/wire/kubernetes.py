"""The BotPlugin API and the labels, annotations and finalizer Precinct puts
on Kubernetes objects, defined once (docs/operator.md describes them)."""

API_GROUP = "precinct.dev"
API_VERSION = "v1alpha1"
KIND = "BotPlugin"

# Labels on everything the operator creates for a plugin.
PLUGIN_LABEL = f"{API_GROUP}/plugin"          # the plugin id: unique cluster-wide, the join key for metrics
BOTPLUGIN_LABEL = f"{API_GROUP}/botplugin"    # metadata.name of the owning BotPlugin (same namespace)

# Annotations.
CONFIG_HASH = f"{API_GROUP}/config-hash"      # pod template: everything a change of which must roll the Pods
GOOD_TEMPLATE = f"{API_GROUP}/good-template"  # Deployment: the last template that became available (rollback)
GOOD_HASH = f"{API_GROUP}/good-hash"
RESUME = f"{API_GROUP}/resume"                # BotPlugin: a new value resumes a suspended plugin
BUNDLE_SHA256 = f"{API_GROUP}/bundle-sha256"  # BotPlugin printed by `plugin install --kubernetes`
PUBLISHER_KEYID = f"{API_GROUP}/publisher-keyid"
INDEX = f"{API_GROUP}/index"
# kopf's own progress and diff-base annotations live under this prefix.
OPERATOR_PREFIX = API_GROUP

FINALIZER = f"{API_GROUP}/revoke-nats-account"
EVENT_REPORTER = f"{API_GROUP}/operator"      # reportingComponent of the Events it writes
