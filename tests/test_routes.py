"""The route planner (gateway/commands/routes.py) and `gateway route plan`.

Hand-checked small tracks (a diamond of two switches, a crossover, a detour round an occupied
section, leg-to-leg through points, a balloon loop, no route, unknown signals), the demo line, and
hypothesis-generated tracks: every plan is a valid route, A* finds Dijkstra's length settling no
more moves, and on small tracks the length is the shortest of all routes enumerated by brute force.
"""
from __future__ import annotations

import itertools
import math
import pathlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import cli
from gateway.app import config
from gateway.cli.route_cmd import RouteInputError, parse_sections, render_plan
from gateway.commands.routes import NoRoute, RoutePlan, UnknownSignal, plan, plan_dijkstra
from gateway.line.topology import Topology, parse_track

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "config" / "demo-line.yaml")


def track(sections: dict, switches: dict | None = None, signals: dict | None = None, **more) -> Topology:
    """A topology from ``{id: (length_m, (x, y), [next...])}``, ``{id: (section, normal, reverse)}`` and
    ``{id: (section, toward)}``; fails the test on any problem."""
    raw = {"sections": {s: {"length_m": length, "pos": list(pos), "next": list(nxt)}
                        for s, (length, pos, nxt) in sections.items()},
           "switches": {w: {"section": s, "normal": n, "reverse": r} for w, (s, n, r) in (switches or {}).items()},
           "signals": {g: {"section": s, "toward": t} for g, (s, t) in (signals or {}).items()}, **more}
    topology, problems = parse_track(raw)
    assert problems == []
    return topology


def both(t: Topology, a: int, b: int, unavailable=frozenset()) -> RoutePlan:
    """The A* plan, after checking Dijkstra's has the same length and settled at least as many moves."""
    fast, slow = plan(t, a, b, unavailable), plan_dijkstra(t, a, b, unavailable)
    assert abs(fast.cost_m - slow.cost_m) < 1e-6
    assert fast.expanded <= slow.expanded
    assert (fast.algorithm, slow.algorithm) == ("A*", "Dijkstra")
    assert_valid(t, fast, a, b, unavailable)
    assert_valid(t, slow, a, b, unavailable)
    return fast


def assert_valid(t: Topology, p: RoutePlan, a_sig: int, b_sig: int, unavailable) -> None:
    """A plan is a route from a_sig to b_sig by the rules of the module docstring (checked from the
    topology's own data, not through the planner's tables)."""
    a, first = t.signals[a_sig].section, t.signals[a_sig].toward
    b, wrong = t.signals[b_sig].section, t.signals[b_sig].toward
    way = (a, *p.sections)
    assert p.sections[0] == first and p.sections[-1] == b
    assert len(set(way)) == len(way), "a section twice"
    assert not set(p.sections) & set(unavailable)
    for u, v in zip(way, way[1:]):
        assert v in t.sections[u].next and u in t.sections[v].next
    assert way[-2] != wrong, "arrives in b from the side its signal faces"
    for p_, c, n in zip(way, way[1:], way[2:]):
        assert n != p_
        for sw in t.switches.values():
            assert not (sw.section == c and {p_, n} == {sw.normal, sw.reverse}), f"leg to leg through {sw.id}"
    needed = []
    for u, v in zip(way, way[1:]):
        here = [(sw.id, "normal" if leg == sw.normal else "reverse") for sw in t.switches.values()
                for s, leg in ((u, v), (v, u)) if sw.section == s and leg in (sw.normal, sw.reverse)]
        needed += sorted(here, key=lambda x: (t.switches[x[0]].section != u, x[0]))
    assert list(p.switches) == needed
    assert len({sw for sw, _ in p.switches}) == len(p.switches), "a switch set twice"
    signs = [g.id for u, v in zip(way, way[1:]) for g in t.signals.values() if (g.section, g.toward) == (u, v)]
    assert p.signals == (*signs, b_sig) and p.signals[0] == a_sig
    assert p.cost_m == pytest.approx(sum(t.sections[s].length_m for s in p.sections), abs=1e-9)


# -- hand-checked tracks ------------------------------------------------------------------------

#   1 -- 2 <  3  > 5 -- 6        switches 31 (points in 2) and 32 (in 5): normal via 3, reverse via 4
#           \ 4 /
DIAMOND = dict(sections={1: (100, (50, 0), [2]), 2: (100, (150, 0), [3, 4]), 3: (210, (300, 5), [5]),
                         4: (300, (300, -20), [5]), 5: (100, (400, 0), [6]), 6: (100, (500, 0), [])},
               switches={31: (2, 3, 4), 32: (5, 3, 4)},
               signals={21: (1, 2), 22: (5, 6), 23: (6, 5), 24: (2, 1)})


def test_a_diamond_takes_the_normal_legs_and_the_reverse_ones_round_an_occupied_section():
    t = track(**DIAMOND)
    p = both(t, 21, 22)
    assert (p.sections, p.switches, p.signals, p.cost_m) == ((2, 3, 5), ((31, "normal"), (32, "normal")), (21, 22),
                                                             410.0)
    p = both(t, 21, 22, unavailable={3})
    assert (p.sections, p.switches, p.cost_m) == ((2, 4, 5), ((31, "reverse"), (32, "reverse")), 500.0)
    back = both(t, 23, 24)  # the other way, through the same points
    assert back.sections == (5, 3, 2) and back.switches == ((32, "normal"), (31, "normal"))


def test_the_start_section_may_be_occupied_and_the_rest_may_not():
    t = track(**DIAMOND)
    assert both(t, 21, 22, unavailable={1}).sections == (2, 3, 5)  # the train stands in 1
    with pytest.raises(NoRoute, match=r"^no route from 21 to 22: section 2, just beyond signal 21, is unavailable"):
        plan(t, 21, 22, {2})
    with pytest.raises(NoRoute, match=r"^no route from 21 to 22: section 5, where signal 22 stands, is unavailable"):
        plan_dijkstra(t, 21, 22, {5})


def test_no_route_names_the_signals_and_the_sections_avoided():
    t = track(**DIAMOND)
    for search in (plan, plan_dijkstra):
        with pytest.raises(NoRoute) as exc:
            search(t, 21, 22, {3, 4, 999})
        assert str(exc.value) == "no route from 21 to 22 avoiding sections 3, 4 (occupied/blocked)"
        assert (exc.value.from_signal, exc.value.to_signal) == (21, 22)
        with pytest.raises(NoRoute, match=r"^no route from 21 to 23: no way along the track leads from section 2 "
                                          r"into section 6 toward 5$"):
            search(t, 21, 23)  # 23 faces the train: it is read by trains coming the other way
        with pytest.raises(NoRoute, match="two different signals"):
            search(t, 21, 21)
        with pytest.raises(NoRoute, match=r"^no route from 21 to 24: signal 24 stands in section 2, just beyond "
                                          r"signal 21, facing the other way$"):
            search(t, 21, 24)
        with pytest.raises(NoRoute, match=r"^no route from 24 to 21: signal 21 stands in section 1, just beyond "
                                          r"signal 24, facing the other way$"):
            search(t, 24, 21)


def test_unknown_signals_are_named_with_their_role():
    t = track(**DIAMOND)
    with pytest.raises(UnknownSignal, match=r"^unknown signal 299 \(to\): the track's signals are 21, 22, 23, 24$"):
        plan(t, 21, 299)
    with pytest.raises(UnknownSignal) as exc:
        plan_dijkstra(t, 7, 22)
    assert (exc.value.signal, exc.value.role) == (7, "from") and isinstance(exc.value, ValueError)


#   1 -- 2 -- 3 -- 4          line A, eastward; 2 -> 13 is a crossover (31 in 2, 32 in 13)
#         \
#   11 -- 12 - 13 -- 14       line B
CROSSOVER = dict(sections={1: (100, (50, 0), [2]), 2: (100, (150, 0), [3, 13]), 3: (100, (250, 0), [4]),
                           4: (100, (350, 0), []), 11: (100, (50, -5), [12]), 12: (100, (150, -5), [13]),
                           13: (110, (250, -5), [14]), 14: (100, (350, -5), [])},
                 switches={31: (2, 3, 13), 32: (13, 12, 2)},
                 signals={21: (1, 2), 22: (3, 4), 23: (13, 14), 24: (12, 13)})


def test_a_crossover_is_taken_reverse_at_both_points():
    t = track(**CROSSOVER)
    assert t.switches_between(2, 13) == ((31, "reverse"), (32, "reverse"))
    assert t.switches_between(13, 2) == ((32, "reverse"), (31, "reverse"))  # the points passed first, first
    p = both(t, 21, 23)
    assert (p.sections, p.switches, p.signals, p.cost_m) == ((2, 13), ((31, "reverse"), (32, "reverse")), (21, 23),
                                                             210.0)
    assert both(t, 21, 22).switches == ((31, "normal"),)
    with pytest.raises(NoRoute):  # 12 -> 13 -> 2 would be leg to leg through 32's points
        plan(t, 24, 22)


#   1 -- 2 -- 3 -- 4         switch 33 has its points in 3: normal 2, reverse 4 (toe 5): no train passes
#             |              2 -> 3 -> 4; the way round 7 (switches 32 in 2, 34 in 4) is longer
#             5
def test_a_route_never_passes_from_one_leg_of_a_switch_to_the_other():
    sections = {1: (100, (50, 0), [2]), 2: (100, (150, 0), [3]), 3: (100, (250, 0), [4, 5]),
                4: (100, (350, 0), [6]), 5: (100, (250, -100), []), 6: (100, (450, 0), [])}
    signals = {21: (1, 2), 22: (4, 6)}
    t = track(sections, {33: (3, 2, 4)}, signals)
    assert t.moves.after[t.moves.index[(2, 3)]] == ((t.moves.index[(3, 5)], 100.0),)
    for search in (plan, plan_dijkstra):
        with pytest.raises(NoRoute):
            search(t, 21, 22)
    sections[2] = (100, (150, 0), [3, 7])
    sections[4] = (100, (350, 0), [6, 7])
    sections[7] = (300, (250, 100), [])
    t = track(sections, {33: (3, 2, 4), 32: (2, 3, 7), 34: (4, 3, 7)}, signals)
    p = both(t, 21, 22)
    assert p.sections == (2, 7, 4) and p.switches == ((32, "reverse"), (34, "reverse")) and p.cost_m == 500


#   1 - 2 - 3 - 4 - 5 < 6 > 7     a balloon loop beyond 5 (points 35: normal 6, reverse 8) and a siding
#           |         \ 8 /       9-10 off 3 (points 33: normal 2, reverse 9): 2 -> 3 -> 9 is leg to leg,
#           9 - 10                so the only way into 9 turns round the loop and passes 3, 4, 5 twice
def test_a_way_that_turns_round_a_loop_is_no_route():
    t = track({1: (100, (0, 0), [2]), 2: (100, (100, 0), [3]), 3: (100, (200, 0), [4, 9]), 4: (100, (300, 0), [5]),
               5: (150, (400, 0), [6, 8]), 6: (150, (500, 100), [7]), 7: (150, (600, 0), [8]),
               8: (150, (500, -100), []), 9: (100, (280, -60), [10]), 10: (100, (380, -60), [])},
              {33: (3, 2, 9), 35: (5, 6, 8)}, {21: (1, 2), 22: (9, 10)})
    for search in (plan, plan_dijkstra):
        with pytest.raises(NoRoute) as exc:
            search(t, 21, 22)
        assert str(exc.value) == ("no route from 21 to 22: the shortest way passes section 5 twice (it turns round "
                                  "through a loop, and switch 35 would be needed normal and reverse); set it as two "
                                  "routes")
        assert exc.value.shortest_walk_m == 100 * 6 + 150 * 5     # 2 3 4 5 6 7 8 5 4 3 9, or round the other way


def test_a_route_enters_its_end_section_once_and_never_the_start_section():
    # a ring 1..6: from 21 (1 toward 2) to 22 (4 toward 3) the train must arrive in 4 from 5, so round
    # the ring through 2, 3 -- but 3 -> 4 enters 4 the wrong way, and 6 -> 1 is the train's own section
    ring = {i: (100, (100 * math.cos(i * math.pi / 3), 100 * math.sin(i * math.pi / 3)), [i % 6 + 1])
            for i in range(1, 7)}
    t = track(ring, {}, {21: (1, 2), 22: (4, 3), 23: (4, 5)})
    with pytest.raises(NoRoute):
        plan(t, 21, 22)
    assert both(t, 21, 23).sections == (2, 3, 4)
    with pytest.raises(NoRoute, match=r"^no route from 22 to 23: signal 23 stands in section 4, where the train at "
                                      r"signal 22 stands$"):
        plan(t, 22, 23)


# -- the demo line ------------------------------------------------------------------------------

def test_the_demo_line_plans_its_named_routes_and_bypasses_a_blocked_section_across_the_crossovers():
    t = config.load(DEMO).track
    assert {r.id: both(t, r.from_signal, r.to_signal).cost_m for r in t.routes.values()} == {
        401: 1620.0, 402: 1720.0, 403: 1620.0, 404: 1720.0}
    straight = both(t, 201, 206)
    assert straight.sections == tuple(range(102, 110)) and straight.cost_m == 2540.0
    p = both(t, 201, 206, unavailable={105})
    assert p.sections == (102, 103, 118, 117, 116, 115, 114, 113, 108, 109)
    assert p.switches == ((301, "reverse"), (304, "reverse"), (305, "reverse"), (302, "reverse"))
    assert p.signals == (201, 202, 206) and p.zones == ("Z1", "Z2") and p.cost_m == 2780.0
    with pytest.raises(NoRoute, match="avoiding sections 105, 115"):
        plan(t, 201, 206, {105, 115})


# -- generated tracks ---------------------------------------------------------------------------

@st.composite
def networks(draw):
    """A jittered grid of sections with some of its edges and diagonals (no two diagonals of a cell),
    points wherever a section joins more than two others (and now and then elsewhere), integer
    lengths long enough for the midpoint check, signals on random section ends and an unavailable set."""
    w, h = draw(st.integers(2, 5)), draw(st.integers(1, 4))
    ids = {(i, j): 1 + i * h + j for i in range(w) for j in range(h)}
    jitter = st.floats(-30, 30, allow_nan=False)
    pos = {ids[c]: (c[0] * 100 + draw(jitter), c[1] * 100 + draw(jitter)) for c in ids}
    candidates = [(ids[i, j], ids[i + di, j + dj]) for (i, j) in ids for di, dj in ((1, 0), (0, 1))
                  if (i + di, j + dj) in ids]
    candidates += [(ids[i, j + 1], ids[i + 1, j]) if draw(st.booleans()) else (ids[i, j], ids[i + 1, j + 1])
                   for (i, j) in ids if (i + 1, j + 1) in ids]
    edges = [e for e in candidates if draw(st.integers(0, 9)) < 7]
    adj = {s: set() for s in pos}
    for u, v in edges:
        adj[u].add(v)
        adj[v].add(u)
    nxt = {s: [] for s in pos}
    for u, v in edges:  # each edge listed on one side or both
        side = draw(st.integers(0, 2))
        if side != 1:
            nxt[u].append(v)
        if side != 0:
            nxt[v].append(u)
    switches, sid = {}, 1000
    for s in sorted(pos):
        pairs = list(itertools.combinations(sorted(adj[s]), 2))
        need = max(0, len(adj[s]) - 2)
        if not pairs:
            continue
        chosen = draw(st.permutations(pairs))[:draw(st.integers(need, min(len(pairs), need + 1)))]
        for n, r in chosen:
            switches[sid] = (s, n, r) if draw(st.booleans()) else (s, r, n)
            sid += 1
    lengths = {s: max([math.ceil(math.dist(pos[s], pos[n])) for n in adj[s]] or [1]) + draw(st.integers(0, 60))
               for s in pos}
    ends = sorted((u, v) for u in adj for v in adj[u])
    if len(ends) < 2:
        ends = []
    chosen_ends = draw(st.lists(st.sampled_from(ends), min_size=2, max_size=10, unique=True)) if ends else []
    signals = {2000 + k: e for k, e in enumerate(chosen_ends)}
    t = track({s: (lengths[s], pos[s], nxt[s]) for s in pos}, switches, signals)
    unavailable = draw(st.frozensets(st.sampled_from(sorted(pos)), max_size=len(pos) // 3))
    return t, unavailable


def brute_force(t: Topology, a_sig: int, b_sig: int, unavailable) -> float | None:
    """The length of the shortest route of all, found by enumerating every way that passes no section twice."""
    a, first = t.signals[a_sig].section, t.signals[a_sig].toward
    b, wrong = t.signals[b_sig].section, t.signals[b_sig].toward
    legs = {(sw.section, frozenset((sw.normal, sw.reverse))) for sw in t.switches.values()}
    best = [None]

    def walk(prev, cur, seen, cost):
        if cur in unavailable or cur in seen:
            return
        cost += t.sections[cur].length_m
        if cur == b:
            if prev != wrong and (best[0] is None or cost < best[0]):
                best[0] = cost
            return
        for n in t.sections[cur].next:
            if n != prev and (cur, frozenset((prev, n))) not in legs:
                walk(cur, n, seen | {cur}, cost)
    if a != b:
        walk(a, first, frozenset({a}), 0.0)
    return best[0]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(network=networks())
def test_generated_tracks_astar_plans_valid_routes_of_dijkstras_length(network):
    t, unavailable = network
    for a, b in itertools.islice(itertools.permutations(sorted(t.signals), 2), 30):
        outcome = {}
        for search in (plan, plan_dijkstra):
            try:
                outcome[search] = search(t, a, b, unavailable)
            except NoRoute as exc:
                outcome[search] = exc
        fast, slow = outcome[plan], outcome[plan_dijkstra]
        exact = brute_force(t, a, b, unavailable) if len(t.sections) <= 9 else "skip"
        if isinstance(fast, RoutePlan) and isinstance(slow, RoutePlan):
            assert abs(fast.cost_m - slow.cost_m) < 1e-6
            assert fast.expanded <= slow.expanded
            assert_valid(t, fast, a, b, unavailable)
            assert_valid(t, slow, a, b, unavailable)
            assert exact == "skip" or abs(exact - fast.cost_m) < 1e-6
        elif isinstance(fast, RoutePlan) or isinstance(slow, RoutePlan):
            # a tie between a route and a way that turns round a loop: the same length either way
            found, refused = (fast, slow) if isinstance(fast, RoutePlan) else (slow, fast)
            assert_valid(t, found, a, b, unavailable)
            assert refused.shortest_walk_m is not None and abs(refused.shortest_walk_m - found.cost_m) < 1e-6
        else:
            assert (fast.shortest_walk_m is None) == (slow.shortest_walk_m is None)
            if fast.shortest_walk_m is None:
                assert exact is None or exact == "skip"   # no way at all: no route either
            else:
                assert abs(fast.shortest_walk_m - slow.shortest_walk_m) < 1e-6
                assert exact == "skip" or exact is None or exact > fast.shortest_walk_m - 1e-6


# -- the CLI ------------------------------------------------------------------------------------

def test_route_plan_prints_the_route(capsys):
    assert cli.main(["route", "plan", "201", "206", "-c", DEMO, "--unavailable", "105"]) == 0
    out = capsys.readouterr().out
    assert out == ("route 201 -> 206: 2,780.0 m through 10 sections\n"
                   "  sections: 102 103 118 117 116 115 114 113 108 109\n"
                   "  switches: 301 reverse, 304 reverse, 305 reverse, 302 reverse\n"
                   "  signals:  201 202 206\n"
                   "  zones:    Z1 Z2\n"
                   "  (A*: 12 moves settled)\n"
                   "  avoided:  105 (unavailable)\n")
    assert cli.main(["route", "plan", "201", "206", "-c", DEMO, "--dijkstra"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("route 201 -> 206: 2,540.0 m through 8 sections\n") and "(Dijkstra: " in out
    demo = plan(config.load(DEMO).track, 201, 204)
    assert render_plan(demo) == demo.describe() + "\n"


@pytest.mark.parametrize("args, message", [
    (["201", "299"], "gateway route plan: unknown signal 299 (to): the track's signals are 201, 202"),
    (["201", "206", "--unavailable", "105,115"],
     "gateway route plan: no route from 201 to 206 avoiding sections 105, 115 (occupied/blocked)\n"),
    (["201", "206", "--unavailable", "10x"], "gateway route plan: --unavailable: expected section ids separated by "
                                             "commas (e.g. 105,106), got '10x'\n"),
    (["201", "206", "--unavailable", "105,999"], "gateway route plan: --unavailable: 999 is not a section of the "
                                                 "track\n"),
    (["201", "206", "-c", str(ROOT / "config" / "compose-line.yaml")],
     f"gateway route plan: {ROOT / 'config' / 'compose-line.yaml'}: the line file has no track: section"),
    (["201", "206", "-c", "/nonexistent/line.yaml"], "gateway route plan: /nonexistent/line.yaml: (file): cannot read"),
])
def test_route_plan_bad_input_is_one_line_on_stderr_and_exit_1(capsys, args, message):
    argv = ["route", "plan", *args] + ([] if "-c" in args else ["-c", DEMO])
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(message.rstrip("\n")) and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("argv", [["route"], ["route", "nope"], ["route", "plan", "201"],
                                  ["route", "plan", "201", "x", "-c", DEMO], ["route", "plan", "201", "206"]])
def test_route_bad_usage_exits_2(capsys, argv):
    assert cli.main(argv) == 2
    assert "usage: gateway route" in capsys.readouterr().err


def test_route_plan_reports_an_invalid_line_file_in_one_line(tmp_path, capsys):
    text = pathlib.Path(DEMO).read_text().replace("102: {length_m: 300, pos: [550, 0]",
                                                  "102: {length_m: 30, pos: [550, 0]")
    (tmp_path / "line.yaml").write_text(text)
    assert cli.main(["route", "plan", "201", "206", "-c", str(tmp_path / "line.yaml")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"gateway route plan: {tmp_path / 'line.yaml'}: 2 problems in the line file, the first: "
                          "track.sections.101.next: the midpoints of 101 and 102 are 350.0 m apart")
    assert err.count("\n") == 1


def test_parse_sections():
    assert parse_sections("105, 106,") == {105, 106} and parse_sections("") == frozenset()
    for bad in ("a", "0", "70000", "1;2", "-5"):
        with pytest.raises(RouteInputError, match="--unavailable"):
            parse_sections(bad)
