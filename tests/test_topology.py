"""The line's track (gateway/line/topology.py) and its place in the line file (gateway/app/config.py).

Every problem of a ``track:`` section is reported at once with its key path; the topology's queries
(neighbours both ways, the switches a move needs, zones, signals) and its moves table; the config
cross-checks against the devices' objects and the named routes.
"""
from __future__ import annotations

import copy
import pathlib

import pytest
import yaml

from gateway.app import config
from gateway.line.topology import Section, Topology, parse_track

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO = yaml.safe_load((ROOT / "config" / "demo-line.yaml").read_text())


def small() -> dict:
    """1 -- 2 < 3 (normal) / 4 (reverse), points 31 in 2; signals 21 (1 toward 2), 22 (3 toward 2)."""
    return {"sections": {1: {"length_m": 100, "pos": [50, 0], "next": [2]},
                         2: {"length_m": 100, "pos": [150, 0], "next": [3]},
                         3: {"length_m": 100, "pos": [250, 0]},
                         4: {"length_m": 100, "pos": [245, -20], "next": [2]}},
            "switches": {31: {"section": 2, "normal": 3, "reverse": 4}},
            "signals": {21: {"section": 1, "toward": 2}, 22: {"section": 3, "toward": 2}},
            "zones": {"Z1": {"sections": [1, 2], "switches": [31]}},
            "routes": {41: {"from": 21, "to": 22}}}


def problems_of(raw) -> list[str]:
    topology, problems = parse_track(raw)
    assert (topology is None) == bool(problems)
    return problems


def test_a_valid_track_and_its_queries():
    t, problems = parse_track(small())
    assert problems == []
    assert t.neighbours(2) == (1, 3, 4) and t.neighbours(4) == (2,)   # 4 listed only its side: both ways
    assert t.switch_between(2, 4) == (31, "reverse") == t.switch_between(4, 2)
    assert t.switch_between(2, 3) == (31, "normal") and t.switch_between(1, 2) is None
    assert t.switches_between(1, 2) == ()
    assert t.signal_at(1, 2) == 21 and t.signal_at(2, 1) is None
    assert t.zone_of_section(2) == "Z1" and t.zone_of_section(3) is None
    assert t.zone_of_switch(31) == "Z1" and t.zone_of_switch(99) is None
    assert t.routes[41].from_signal == 21 and t.routes[41].to_signal == 22
    with pytest.raises(TypeError):
        t.sections[9] = t.sections[1]   # read-only
    assert parse_track(t.to_raw()) == (t, [])
    assert parse_track(None) == (None, [])


def test_moves_never_go_back_nor_from_leg_to_leg():
    t, _ = parse_track(small())
    m = t.moves
    follow = {(m.tail[i], m.head[i]): {(m.tail[j], m.head[j]) for j, _ in m.after[i]} for i in range(len(m.head))}
    assert follow[(1, 2)] == {(2, 3), (2, 4)}
    assert follow[(3, 2)] == {(2, 1)} and follow[(4, 2)] == {(2, 1)}   # not 3 -> 2 -> 4: leg to leg
    assert follow[(2, 1)] == set()                                     # not back into 2
    assert dict(m.after[m.index[(1, 2)]]) == {m.index[(2, 3)]: 100.0, m.index[(2, 4)]: 100.0}


@pytest.mark.parametrize("change, expected", [
    (lambda r: r["sections"][1].update(length_m=0),
     "track.sections.1.length_m: expected a length in metres, more than 0 and at most 100,000, got 0"),
    (lambda r: r["sections"][1].pop("length_m"),
     "track.sections.1.length_m: expected a length in metres, more than 0 and at most 100,000 (required), got None"),
    (lambda r: r["sections"][1].update(pos=[1]),
     "track.sections.1.pos: expected [x_m, y_m]: the midpoint's position, two numbers in metres, got [1]"),
    (lambda r: r["sections"][1].update(next=[2, "x"]),
     "track.sections.1.next: expected a list of section ids 1..65535, got [2, 'x']"),
    (lambda r: r["sections"][1].update(next=[2, 9]),
     "track.sections.1.next: 9 is not a section (not in track.sections)"),
    (lambda r: r["sections"][1].update(next=[2, 1]), "track.sections.1.next: 1 is the section itself"),
    (lambda r: r["sections"][4].update(pos=[400, 0]),
     "track.sections.4.next: the midpoints of 4 and 2 are 250.0 m apart, more than the 100.0 m of track between "
     "them (half the sum of their length_m): pos or length_m is wrong"),
    (lambda r: r.pop("switches"),
     "track.sections.2.next: 3 neighbours (1, 3, 4) but 2 holds 0 switches: a section joins two others, plus one "
     "for each switch whose points it holds"),
    (lambda r: r["switches"][31].update(reverse=1), None),  # then 2 joins 1, 3, 4 with points between 3 and 1
    (lambda r: r["switches"][31].update(normal=4),
     "track.switches.31.reverse: the same section as normal (4)"),
    (lambda r: r["switches"].update({32: {"section": 2, "normal": 4, "reverse": 3}}),
     "track.switches.32: the same section and legs as switch 31"),
    (lambda r: r["switches"][31].update(section=3),
     "track.switches.31.normal: 3 is not next to 3 (a switch's legs are neighbours of the section holding its points)"),
    (lambda r: r["switches"][31].pop("reverse"),
     "track.switches.31.reverse: expected a section id 1..65535 (required), got None"),
    (lambda r: r["signals"][21].update(toward=3), "track.signals.21.toward: 3 is not next to 1"),
    (lambda r: r["signals"].update({23: {"section": 1, "toward": 2}}),
     "track.signals.23: stands where signal 21 stands (section 1 toward 2)"),
    (lambda r: r["zones"].update(Z2={"sections": [2], "switches": []}),
     "track.zones.Z2.sections: 2 is already in zone Z1 (an object is in one zone)"),
    (lambda r: r["zones"].update({"Z 2": {"sections": [3]}}),
     "track.zones.Z 2: expected a zone name of letters, digits, '_', '.' and '-' (1..64) as key, got 'Z 2'"),
    (lambda r: r["routes"][41].update(to=29), "track.routes.41.to: 29 is not a signal (not in track.signals)"),
    (lambda r: r["routes"][41].update(to=21), "track.routes.41.to: the same signal as from (21)"),
    (lambda r: r["sections"].update({"1": {"length_m": 1, "pos": [0, 0]}}),
     "track.sections.1: 1 is listed twice (as 1 and as '1')"),
    (lambda r: r["sections"].update({0: {"length_m": 1, "pos": [0, 0]}}),
     "track.sections.0: expected an object id 1..65535 as key, got 0"),
    (lambda r: r["sections"][1].update(lenght_m=3),
     "track.sections.1.lenght_m: unknown key (expected one of length_m, pos, next)"),
    (lambda r: r.update(signal={}), "track.signal: unknown key (expected one of sections, switches, signals, zones, "
                                    "routes)"),
    (lambda r: r.pop("sections"), "track.sections: missing (expected a mapping id: {length_m, pos, next})"),
])
def test_each_problem_names_its_key_path(change, expected):
    raw = small()
    change(raw)
    problems = problems_of(raw)
    if expected is None:
        assert problems == []
    else:
        assert expected in problems, problems


def test_a_broken_section_is_reported_once_not_again_by_every_reference():
    raw = small()
    raw["sections"][2]["length_m"] = "long"
    assert problems_of(raw) == [
        "track.sections.2.length_m: expected a length in metres, more than 0 and at most 100,000, got 'long'"]
    assert problems_of([1]) == ["track: expected a mapping with sections, switches, signals, zones, routes, got [1]"]


def test_the_constructor_refuses_inconsistent_parts():
    with pytest.raises(ValueError, match=r"inconsistent track:\n  track.sections.1.next: 5 is not a section"):
        Topology({1: Section(1, 10.0, (0.0, 0.0), (5,))})


# -- in the line file ---------------------------------------------------------------------------

def test_the_demo_line_has_its_track_and_compose_has_none():
    cfg = config.load(str(ROOT / "config" / "demo-line.yaml"))
    assert len(cfg.track.sections) == 20 and set(cfg.track.routes) == {401, 402, 403, 404}
    assert cfg.track.zone_of_switch(303) == "Z1"   # a zone may name a switch with no place in the track
    assert config.load(str(ROOT / "config" / "compose-line.yaml")).track is None


def test_track_problems_are_config_problems_with_the_closest_key():
    doc = copy.deepcopy(DEMO)
    doc["track"]["sectons"] = {}
    doc["track"]["sections"][101]["nxt"] = [102]
    doc["trak"] = {}
    with pytest.raises(config.ConfigError) as exc:
        config.parse(doc)
    assert exc.value.problems == ["trak: unknown key (did you mean 'track'?)",
                                  "track.sectons: unknown key (did you mean 'sections'?)",
                                  "track.sections.101.nxt: unknown key (did you mean 'next'?)"]


def test_every_track_object_is_an_object_of_a_configured_device():
    doc = copy.deepcopy(DEMO)
    doc["track"]["sections"][121] = {"length_m": 400, "pos": [200, -10], "next": [120]}
    doc["track"]["sections"][121]["length_m"] = -1      # its own problem too: both are reported
    doc["track"]["signals"][299] = {"section": 101, "toward": 120}
    doc["track"]["switches"][399] = {"section": 120, "normal": 119, "reverse": 101}
    doc["track"]["zones"]["Z2"]["switches"] += [398, 397]
    with pytest.raises(config.ConfigError) as exc:
        config.parse(doc)
    assert set(exc.value.problems) == {
        "track.sections.121.length_m: expected a length in metres, more than 0 and at most 100,000, got -1",
        "track.sections.121: 121 is not an object of a configured device (in no devices[].sections)",
        "track.switches.399: 399 is not an object of a configured device (in no devices[].switches)",
        "track.signals.299: 299 is not an object of a configured device (in no devices[].signals)",
        "track.zones.Z2.switches: 398, 397 are not objects of a configured device (in no devices[].switches)"}


def test_a_named_route_without_a_way_on_the_free_line_is_a_problem():
    doc = copy.deepcopy(DEMO)
    doc["track"]["routes"][405] = {"from": 201, "to": 212}   # 212 is round the loop: fine
    doc["devices"][0]["signals"].append(213)
    doc["track"]["signals"][213] = {"section": 104, "toward": 103}   # for westward moves on the up line
    doc["track"]["routes"][406] = {"from": 204, "to": 213}   # 204 leads east, and nothing turns it round
    doc["track"]["routes"][407] = {"from": 202, "to": 213}   # 202 can: 103 -> 118, east, the curve into 110
    with pytest.raises(config.ConfigError) as exc:
        config.parse(doc)
    assert exc.value.problems == [
        "track.routes.406: no route from 204 to 213: no way along the track leads from section 107 into section 104 "
        "toward 103 (on the free line)"]


def test_a_changed_track_needs_a_restart():
    old = config.parse(copy.deepcopy(DEMO))
    doc = copy.deepcopy(DEMO)
    doc["track"]["sections"][101]["length_m"] = 450
    assert config.diff(old, config.parse(doc)) == ([], ["track"])
    doc.pop("track")
    assert config.diff(old, config.parse(doc)) == ([], ["track"])
    assert config.diff(old, config.parse(copy.deepcopy(DEMO))) == ([], [])
