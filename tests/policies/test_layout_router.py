import pytest

from policies.layout import Group, Layout, candidate_groups
from policies.policy import PolicyConfig, make_policy
from policies.request import Request
from policies.router import LeastLoadedRouter
from traces.spec import RequestSpec


def test_static_layouts():
    assert Layout.static_dp(8).describe() == "8xTP1"
    assert Layout.static_tp(8).describe() == "1xTP8"
    assert Layout.uniform(8, 2).describe(gpus_per_engine=2) == "4xTP4"
    assert Layout.from_widths(8, [4, 2, 1, 1]).describe() == "TP4+TP2+2xTP1"


@pytest.mark.parametrize("widths", [[3, 5], [2, 4, 2], [4, 4, 1], [1, 2, 1, 4]])
def test_invalid_layouts_are_refused(widths):
    with pytest.raises(ValueError):
        Layout.from_widths(8, widths)


def test_whole_node_is_a_group_even_when_not_a_power_of_two():
    assert Layout.static_tp(6).groups == (Group(0, 6),)


def test_candidate_groups_are_aligned_powers_of_two_plus_all():
    labels = [g.label for g in candidate_groups(4)]
    assert labels == ["e0", "e1", "e2", "e3", "e0-1", "e2-3", "e0-3"]
    assert len(candidate_groups(8)) == 8 + 4 + 2 + 1


def test_policies_give_their_layouts():
    assert make_policy(PolicyConfig(kind="static_mixed", engines_per_group=4)).initial_layout(8).describe() == "2xTP4"
    with pytest.raises(ValueError, match="not one of"):
        PolicyConfig(kind="flyng")


class G:
    def __init__(self, label, load, cap, accepting=True):
        self.label, self.num_outstanding, self.capacity_tokens, self.accepting = label, load, cap, accepting


def r(prompt=100, output=10):
    return Request(RequestSpec(0, 0.0, prompt, output))


def test_router_picks_least_loaded_and_rotates_ties():
    router = LeastLoadedRouter(max_model_len=10_000)
    groups = [G("a", 2, 1000), G("b", 1, 1000), G("c", 1, 1000)]
    assert router.route(r(), groups) == (1, None)
    assert router.route(r(), groups) == (2, None)  # tie rotates past the last choice
    assert router.route(r(), groups) == (1, None)


def test_router_skips_groups_too_small_and_rejects_with_reason():
    router = LeastLoadedRouter(max_model_len=10_000)
    groups = [G("a", 0, 500), G("b", 5, 5000)]
    assert router.route(r(prompt=1000), groups) == (1, None)
    idx, reason = router.route(r(prompt=6000), groups)
    assert idx is None and "6009 tokens of KV" in reason and "5000" in reason
    idx, reason = router.route(r(prompt=9995, output=10), groups)
    assert idx is None and "max_model_len" in reason
