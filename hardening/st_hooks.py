"""schemathesis hooks for hardening/fuzz_api.sh (loaded through SCHEMATHESIS_HOOKS).

schemathesis' built-in `missing_required_header` check hard-codes 401 for a missing
`Authorization` header, but the contract is the reference's: connexion rejects the request
with 400 before the handler runs (shared/reference/anonlink-entity-service.md §1, kept in
docs/api-compatibility.md). fuzz_api.sh therefore switches that check off and runs this one
instead: the same cases, with the contract's status (and a problem document as the body)."""

import schemathesis
from schemathesis.core.failures import Failure
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation.meta import CoveragePhaseData, CoverageScenario


@schemathesis.check
def missing_authorization_is_400(ctx, response, case):
    meta = case.meta
    data = meta.phase.data if meta is not None else None
    if not isinstance(data, CoveragePhaseData) or data.scenario != CoverageScenario.MISSING_PARAMETER:
        return None
    if data.parameter_location != ParameterLocation.HEADER or (data.parameter or "").lower() != "authorization":
        return None
    if response.status_code != 400:
        raise Failure(
            operation=f"{case.method} {case.path}",
            title="Missing Authorization not rejected with 400",
            message=f"Got {response.status_code} without an Authorization header; the contract says 400",
        )
    body = response.json()
    if body.get("detail") != "Missing header parameter 'Authorization'":
        raise Failure(
            operation=f"{case.method} {case.path}",
            title="Missing Authorization: unexpected problem detail",
            message=f"Got {body!r}",
        )
    return None
