"""Streaming equals batch; counts reconcile; a failing step never stops the stream."""

import asyncio

import numpy as np
import pandas as pd
import pytest
from streamz import Stream
from streamz.dataframe import DataFrame as StreamingDataFrame

from sbg.detect.detectors import Detector, ZScore
from sbg.stream.batch import run_detect
from sbg.stream.monitor import Monitor
from sbg.stream.pipeline import Pipeline

from .conftest import make_frame


def write_csv(frame, path, bad_lines=()):
    text = frame.rename(columns={"entity": "device_id"}).to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%S")
    lines = text.splitlines()
    for pos, line in bad_lines:
        lines.insert(pos, line)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def csv_file(tmp_path):
    frame = make_frame(n=3000, seed=11, gaps=False)
    frame["timestamp"] = pd.date_range("2024-01-01", periods=len(frame), freq="s")
    bad = [(100, "2024-01-01T00:01:00,a,oops,1"), (200, "not,enough"), (300, "2024-99-01T00:00:00,a,1,2")]
    return write_csv(frame, tmp_path / "data.csv", bad)


def test_edges_are_streamz_dataframes(csv_file):
    m = Monitor([csv_file])
    assert isinstance(m.enriched, StreamingDataFrame)
    assert list(m.enriched.example.columns) == m.pipeline.output_columns()


def test_streaming_equals_batch(csv_file, tmp_path):
    out = tmp_path / "out.csv"
    run_detect(csv_file, out, chunk_size=777)
    batch = pd.read_csv(out)
    for max_chunk in (1, 64, 5000):
        m = Monitor([csv_file], max_chunk_rows=max_chunk)
        if max_chunk == 1:
            m.replay.sources[0].block_bytes = 512
        m.run_to_end()
        live = m.history.frame()
        assert len(live) == len(batch)
        np.testing.assert_allclose(live["anomaly_score"].round(6), batch["anomaly_score"], rtol=0, atol=0)
        assert (live["reason"].fillna("").to_numpy() == batch["reason"].fillna("").to_numpy()).all()
        assert m.metrics.reconciles and m.metrics.rows_quarantined == 3


def test_counts_reconcile_at_every_chunk(csv_file):
    m = Monitor([csv_file], max_chunk_rows=100)
    seen = []
    m.subscribe(lambda chunk: seen.append((m.metrics.rows_in, m.metrics.rows_ok, m.metrics.rows_quarantined)))
    m.run_to_end()
    assert seen and all(i == ok + q for i, ok, q in seen)
    assert m.metrics.rows_in == 3003


class Exploding(Detector):
    """Raises on every third chunk."""

    label = "exploding"

    def scores(self, chunk, features):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls % 3 == 0:
            raise RuntimeError("boom")
        return np.zeros(chunk.X.shape)


def test_a_failing_detector_is_counted_not_fatal(csv_file):
    m = Monitor([csv_file], max_chunk_rows=200)
    m.pipeline.detectors.append(Exploding())
    m.run_to_end()
    assert m.replay.state == "finished"
    assert m.metrics.errors >= 5 and "boom" in m.metrics.last_error
    assert m.metrics.reconciles and len(m.history) == m.metrics.rows_ok
    assert any(e["kind"] == "error" for e in m.events)


def test_a_failing_viewer_is_counted_not_fatal(csv_file):
    m = Monitor([csv_file], max_chunk_rows=500)
    m.subscribe(lambda chunk: 1 / 0)
    m.run_to_end()
    assert m.metrics.errors == m.metrics.analyses and m.replay.state == "finished"


def test_pipeline_process_is_the_streamz_node():
    frame = make_frame(n=400, seed=2)
    p1 = Pipeline(signals=["v", "w"])
    p2 = Pipeline(signals=["v", "w"])
    source = Stream()
    out = []
    p2.connect(source).stream.sink(out.append)
    for i in range(0, 400, 37):
        source.emit(frame.iloc[i:i + 37].reset_index(drop=True))
    streamed = pd.concat(out, ignore_index=True)
    direct = p1.process(frame)
    pd.testing.assert_frame_equal(streamed, direct)


def test_settings_reach_the_detectors(csv_file):
    from sbg.config import Settings

    m = Monitor([csv_file], settings=Settings.from_dict({"detectors": {"zscore": {"threshold": 3.5}}}))
    z = [d for d in m.pipeline.detectors if isinstance(d, ZScore)][0]
    assert z.threshold == 3.5


def test_async_replay_runs_on_the_event_loop(csv_file):
    async def main():
        m = Monitor([csv_file], speed="max", max_chunk_rows=500)
        m.replay.start()
        for _ in range(2000):
            if m.replay.state == "finished":
                break
            await asyncio.sleep(0.005)
        return m

    m = asyncio.run(main())
    assert m.replay.state == "finished" and m.metrics.rows_in == 3003
