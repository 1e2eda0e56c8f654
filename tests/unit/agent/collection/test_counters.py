"""The arithmetic behind counters: rates from cumulative readings, CPU shares, /proc/PID/stat parsing."""

from __future__ import annotations

from opsmgr.agent.counters import CLOCK_TICKS, PAGE_SIZE, busy_percent, parse_stat, rates


def test_rates_are_per_second_and_summed_per_instance() -> None:
    previous = {"sshd\0" + "1:10": 1.0, "sshd\0" + "2:20": 5.0, "cron\0" + "3:30": 2.0}
    current = {"sshd\0" + "1:10": 3.0, "sshd\0" + "2:20": 9.0, "cron\0" + "3:30": 2.0, "sshd\0" + "4:40": 100.0}
    assert rates(previous, current, 2.0, lambda key: key.split("\0")[0]) == {"sshd": 3.0, "cron": 0.0}


def test_a_counter_that_went_down_contributes_nothing() -> None:
    assert rates({"eth0": 500.0}, {"eth0": 100.0}, 10.0) == {"eth0": 0.0}
    assert rates({"eth0": 1.0}, {"eth0": 2.0}, 0.0) == {}


def test_busy_percent_is_the_share_of_elapsed_cpu_time() -> None:
    before = {"user": 10.0, "system": 5.0, "idle": 85.0}
    after = {"user": 16.0, "system": 7.0, "idle": 97.0}
    assert busy_percent(before, after, ("user", "system")) == 40.0
    assert busy_percent(before, before, ("user",)) == 0.0


def test_parse_stat_survives_spaces_and_parentheses_in_the_name() -> None:
    fields = ["S"] + ["0"] * 10 + [str(3 * CLOCK_TICKS), str(CLOCK_TICKS)] + ["0"] * 4 + ["7", "0", "123456",
                                                                                          "999", "25"]
    comm, key, cpu, rss, threads = parse_stat("42", f"42 (my (odd) prog) {' '.join(fields)}")
    assert (comm, key, cpu, rss, threads) == ("my (odd) prog", "42:123456", 4.0, 25.0 * PAGE_SIZE, 7.0)


def test_parse_stat_of_this_process() -> None:
    with open("/proc/self/stat") as stat:
        comm, key, cpu, rss, threads = parse_stat("self", stat.read())
    assert comm and key.startswith("self:") and cpu >= 0 and rss > 0 and threads >= 1
