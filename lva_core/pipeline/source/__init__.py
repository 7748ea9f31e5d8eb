"""The video source: PyAV opening, decoding, sampling and conversion of one stream, by job.

``reader.VideoSource`` drives the other modules: ``reference`` (what may be opened),
``errors`` (what a failure is), ``spec`` (what to deliver), ``timing`` (frame numbers, clocks,
sampling, lag), ``transform`` (rotation, ROI; the conversions are in ``lva_core.pipeline.pixels``).
Geometry shared with the analytics is in ``lva_core.pipeline.geometry``.

Decisions, with the measurements behind them (PyAV 18 with its bundled FFmpeg 8):

* **Timeouts.** Network sources get FFmpeg's socket timeout (``timeout``/``rw_timeout``, µs)
  and PyAV's interrupt timeout ``timeout=(open, read)``; without them a frozen source hangs
  forever. On a frozen RTSP server the interrupt fires after ``read_timeout`` but the RTSP
  demuxer then returns the one packet it was holding and blocks for another ``read_timeout``:
  so a packet that took ``read_timeout`` or longer to arrive is itself the timeout, and
  :meth:`VideoSource.frames` raises at once instead of waiting twice.
* **End of a live stream.** A killed RTSP server looks like a clean end of file. For a live
  stream that is a failure (``end_of_stream``) to reconnect from; a video file just ends.
* **Decode only what is needed.** Frames are numbered from packets, not from decoder output, so
  that frames the decoder never produced still count. When the sampling period covers a whole
  keyframe interval (observed, not assumed: three keyframes in a row), the decoder is told to
  skip everything but keyframes (``skip_frame = "NONKEY"``), switching only at a keyframe so
  that references are always complete. On a 30 s 720p clip (keyframe every second) at 1 frame/s
  it reads ~4300 source frames/s instead of ~1270 (3.4x; every frame converted: ~720); the
  frames delivered, their numbers, time offsets and pixels are the same as with full decoding.
* **No lag on live streams.** When the reader falls behind the source's own clock by more
  than ``max_lag`` seconds (an overloaded CPU, a slow consumer), non-key frames are dropped
  before decoding until it is back at the live edge. Measured on RTSP with a consumer taking
  0.2 s a frame: 6.5 s behind after 8 s without it, never more than 1.2 s with ``max_lag=1``.
  Not for HLS: it delivers whole segments at once, so media time is ahead and behind by a
  segment by design, and FFmpeg's HLS demuxer itself skips segments that left the playlist.
* **Pixels.** A sampled frame stays the decoder's frame (``Pixels``, lva_core/pipeline/pixels.py)
  and becomes what its models declare (full RGB, RGB scaled to the network, or the I420 planes
  copied straight into shared memory), each conversion through one swscale context per stream
  and format with one thread (``to_ndarray("rgb24")`` would build a new context and its
  ``cpu_count + 1`` slice threads for every frame). Full RGB's ROI is a numpy view of the one
  conversion. Rotation is done by FFmpeg filters on the YUV frame, after cropping the ROI there
  (``crop`` only moves pointers): numpy's ``rot90`` plus a contiguous copy costs ~4.5 ms for
  720p, ``transpose`` plus conversion ~1.4 ms, and ~0.4 ms for half the frame. ``Frame.image``
  may have padded rows (``strides[0] > width * 3``) when ``width * 3`` is not a multiple of
  the alignment; pixels within a row are contiguous.
* **Corrupt data.** An undecodable packet (bit errors, a truncated file's last frame) is
  counted and skipped, as players do; ``MAX_CONSECUTIVE_DECODE_ERRORS`` in a row, or a file
  that yields no frame at all, is ``corrupt_data``. A file that cannot be parsed is
  ``corrupt_data`` at open.
"""
