"""infra/prefect.yaml: `prefect work-pool create` + `prefect deploy --all` from a copy of the repository register the
pipeline's deployment and one deployment per stage per pool on a real server, with the run form's typed parameters."""

from idtprior.config import STAGES


def flow_name(stage: str) -> str:
    return f"idtprior-{stage.replace('_', '-')}"


def resolve(schema: dict, prop: dict) -> dict:
    """A property of an OpenAPI parameter schema with its ``$ref`` / ``allOf`` / ``anyOf`` wrappers resolved."""
    while True:
        if "$ref" in prop:
            prop = schema["definitions"][prop["$ref"].rsplit("/", 1)[1]]
        elif "allOf" in prop and len(prop["allOf"]) == 1:
            prop = prop["allOf"][0]
        elif "anyOf" in prop:
            prop = next(p for p in prop["anyOf"] if p.get("type") != "null")
        else:
            return prop


def test_deploy_all_registers_every_deployment_on_its_pool(prefect_server, deployed, pool_workers):
    server = prefect_server
    # (pool_workers: the session's workers start while the deploy runs; checked here too: one online per pool)
    for pool in ("idtprior-cpu", "idtprior-gpu"):
        assert [(w["name"], w["status"]) for w in server.post(f"/work_pools/{pool}/workers/filter", {})] == [
            (f"{pool}-worker", "ONLINE")]
    deployments = server.post("/deployments/filter", {"limit": 200})
    flows = {f["id"]: f["name"] for f in server.post("/flows/filter", {"limit": 200})}
    got = {(flows[d["flow_id"]], d["name"]): d for d in deployments}
    want = {("idtprior-pretrain", "default"): "idtprior-cpu"}
    want.update({(flow_name(s), pool): f"idtprior-{pool}" for s in STAGES for pool in ("cpu", "gpu")})
    assert {key: d["work_pool_name"] for key, d in got.items() if key in want} == want
    assert set(want) <= set(got)
    for d in got.values():  # every run goes through the server's parameter validation
        assert d["enforce_parameter_schema"] is True
        # the worker runs the flow from the clone the deployment was made in
        assert d["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(deployed)}}]

    schema = got[("idtprior-pretrain", "default")]["parameter_openapi_schema"]
    props = schema["properties"]
    assert {"config", "workspace", "source", "video_root", "stages", "from_stage", "overrides",
            "dask_address"} <= set(props)
    # stages: a multi-select of every stage name (an enum generated from STAGES), from_stage: one of them or the first
    stages = resolve(schema, props["stages"])
    assert stages["type"] == "array" and resolve(schema, stages["items"])["enum"] == list(STAGES)
    assert resolve(schema, props["from_stage"])["enum"] == ["(the first selected)", *STAGES]
    assert props["config"]["default"] == "demo"
    assert not schema.get("required"), "Quick run needs a default for every parameter"
    for name, prop in props.items():
        assert prop.get("title") and prop.get("description"), f"parameter {name}: {prop}"

    stage_schema = got[(flow_name("decode"), "cpu")]["parameter_openapi_schema"]
    assert "stages" not in stage_schema["properties"] and "from_stage" not in stage_schema["properties"]
    assert stage_schema["properties"]["config"].get("default") == ""  # "": the config the workspace remembers
    assert not stage_schema.get("required")

    pools = {p["name"]: p["type"] for p in server.post("/work_pools/filter", {})}
    assert pools["idtprior-cpu"] == pools["idtprior-gpu"] == "process"


def test_prefect_yaml_lists_every_stage_on_both_pools():
    """Without a server: the file's entries are the pipeline plus two per stage of STAGES, each at its UI flow's
    entrypoint (a stage added to the code without its deployments fails here)."""
    import yaml
    from server_process import REPO

    from idtprior.flows.deployments import entrypoints

    doc = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
    eps = entrypoints()
    got = sorted((d["entrypoint"], d["name"], d["work_pool"]["name"]) for d in doc["deployments"])
    want = [(eps["idtprior-pretrain"], "default", "idtprior-cpu")]
    want += [(eps[flow_name(s)], pool, f"idtprior-{pool}") for s in STAGES for pool in ("cpu", "gpu")]
    assert got == sorted(want)
