"""The pytest plugin, exercised through real pytest sessions (pytester)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


def test_markers_are_registered_with_their_signatures(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("-p", "harness.pytest_plugin", "--markers")
    result.stdout.fnmatch_lines(
        ["*@pytest.mark.e2e*", "*@pytest.mark.chaos(scenario=None, **slo)*"]
    )


def test_unknown_cluster_option_is_rejected(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("-p", "harness.pytest_plugin", "--cluster", "bogus")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*invalid choice: 'bogus'*"])


def test_context_with_a_non_kube_cluster_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest(
        "-p", "harness.pytest_plugin", "--cluster", "local", "--context", "prod"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--context only applies to --cluster existing*"])


def test_replicas_out_of_range_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("-p", "harness.pytest_plugin", "--replicas", "0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_unreachable_cluster_is_a_skip_with_a_how_to(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `existing` with no kubeconfig at all cannot be reached: the suite skips, not errors
    monkeypatch.setenv("KUBECONFIG", str(pytester.path / "no-such-kubeconfig"))
    monkeypatch.setenv("HARNESS_STATE_DIR", str(pytester.path / "state"))
    pytester.makepyfile(
        "def test_needs_cluster(service_url):\n    raise AssertionError('must not run')\n"
    )
    result = pytester.runpytest("-p", "harness.pytest_plugin", "--cluster", "existing", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*cluster 'existing' is not reachable*"])


def test_unit_runs_never_start_a_cluster(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_plain():\n    assert 1 + 1 == 2\n")
    result = pytester.runpytest("-p", "harness.pytest_plugin", "--cluster", "local")
    result.assert_outcomes(passed=1)
    assert not (pytester.path / ".state").exists()
