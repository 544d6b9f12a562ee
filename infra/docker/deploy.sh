#!/bin/sh
# The one-shot `deploy` service of infra/compose.yaml: the two work pools (process type; prefect.yaml cannot declare
# pools), then every deployment of infra/prefect.yaml. Run again at each start: an existing pool is left as it is
# (its concurrency limits, paused or not), deployments are updated in place.
set -eu
for pool in idtprior-cpu idtprior-gpu; do
    prefect work-pool inspect "$pool" > /dev/null 2>&1 || prefect work-pool create "$pool" --type process
done
exec prefect --no-prompt deploy --all --prefect-file infra/prefect.yaml
