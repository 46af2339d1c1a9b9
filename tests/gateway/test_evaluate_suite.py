"""``permgate test`` evaluates each case as the gateway evaluates a request: request
hygiene and authentication answer before the tenant and permission steps."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from permgate.cli import main

POLICY = textwrap.dedent(
    """\
    accounts:
      - id: acme
        tenants: [{id: acme-prod, type: PRODUCTION}]
        roles:
          - {name: agent, display_name: Agent, permissions: [quote.create]}
        principals:
          - {id: alice, roles: [agent], tenants: [acme-prod]}
          - {id: gone, roles: [agent], tenants: [acme-prod], disabled: true}
    """
)
MAP = textwrap.dedent(
    """\
    version: 1
    defaults:
      tenant: {path_param: tenantLocator}
    endpoints:
      - {id: quotes.create, method: POST, path: "/policy/{tenantLocator}/quotes",
         permissions: [quote.create]}
    """
)


def _suite(folder: Path, case: str) -> Path:
    (folder / "policy.yaml").write_text(POLICY)
    (folder / "map.yaml").write_text(MAP)
    suite = folder / "suite.yaml"
    suite.write_text("map: map.yaml\npolicy: policy.yaml\ncases:\n" + textwrap.indent(case, "  "))
    return suite


CASES = [
    pytest.param(
        "- {principal: alice, method: POST, path: /policy/acme-prod/../acme-prod/quotes,\n"
        "   expect: deny, reason: ambiguous_path}\n",
        id="dot-segment-is-a-hygiene-deny",
    ),
    pytest.param(
        "- {principal: gone, method: POST, path: /policy/acme-prod/quotes,\n"
        "   expect: deny, reason: disabled_principal}\n",
        id="disabled-principal-is-an-authentication-deny",
    ),
    pytest.param(
        "- {token: {owner: alice, permissions: [quote.create], tenants: [acme-prod]},\n"
        "   method: POST, path: '/policy/acme-prod/quotes?x=1', expect: allow, reason: allowed}\n",
        id="token-presented-as-a-client-would",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_case_gets_the_gateways_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    """The case's expected decision and reason are the gateway's: it passes."""
    code = main(["test", str(_suite(tmp_path, case))])
    out = capsys.readouterr().out
    assert (code, out) == (0, "1 cases, 0 failed\n")


def test_a_hygiene_refusal_says_which_step_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A case expecting allow on a path the gateway refuses fails, naming the step
    and the gateway's status."""
    case = "- {principal: alice, method: POST, path: /policy/acme-prod%2Fx/quotes, expect: allow}\n"
    code = main(["test", str(_suite(tmp_path, case))])
    out = capsys.readouterr().out
    assert code == 1
    assert "expected allow, got deny (ambiguous_path); refused by request hygiene with 400" in out
