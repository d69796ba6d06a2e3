"""The embedded default's secret: made once per checkout, the same for every process."""

import multiprocessing

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.local_secret import local_secret_key


def test_made_once_then_read_back(tmp_path):
    path = tmp_path / ".secret-key"

    key = local_secret_key(path)

    assert len(key) >= 50
    assert local_secret_key(path) == key
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [".secret-key"]  # no temporary file left behind


def _make(path, barrier, results):
    barrier.wait()
    results.put(local_secret_key(path))


def test_processes_starting_at_once_all_get_the_one_key_that_got_there_first(tmp_path):
    path = tmp_path / ".secret-key"
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(6), context.Queue()
    processes = [context.Process(target=_make, args=(path, barrier, results)) for _ in range(6)]
    for process in processes:
        process.start()
    keys = [results.get(timeout=30) for _ in processes]
    for process in processes:
        process.join(timeout=30)

    assert len(set(keys)) == 1
    assert keys[0] == path.read_text().strip()
    assert [p.name for p in tmp_path.iterdir()] == [".secret-key"]


def test_an_empty_key_file_is_refused_not_used(tmp_path):
    path = tmp_path / ".secret-key"
    path.write_text("\n")

    with pytest.raises(ImproperlyConfigured, match="is empty"):
        local_secret_key(path)


def test_a_directory_it_cannot_write_gives_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-directory" / ".secret-key"

    with pytest.raises(ImproperlyConfigured, match="Set SECRET_KEY"):
        local_secret_key(missing)


def test_a_key_path_that_cannot_be_read_gives_a_clear_error(tmp_path):
    path = tmp_path / ".secret-key"
    path.mkdir()  # not a file: reading it fails (as root, file permissions would not)

    with pytest.raises(ImproperlyConfigured, match="cannot be read"):
        local_secret_key(path)
