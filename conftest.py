# nameko's pytest plugin no longer monkey-patches; it must happen first
import eventlet

eventlet.monkey_patch()  # noqa: E402
