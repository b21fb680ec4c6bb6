"""What the panel asks the user and how it tells them what went wrong. The Logic asks nothing:
the answers gathered here reach it as arguments."""

import contextlib
import logging
import traceback

import slicer
from slicer.i18n import tr as _

from VISTA3DSlicerLib.errors import Cancelled, VISTA3DError


@contextlib.contextmanager
def reportingErrors(title: str, waitCursor: bool = False):
    """The body of a button's slot: a user error (``VISTA3DError``) is shown as its message alone,
    anything else also with its traceback under "Details" and in the log. Nothing is raised into
    Qt, which would print a bare traceback (``slicer.util.tryWithErrorDisplay`` raises again)."""
    try:
        with slicer.util.WaitCursor() if waitCursor else contextlib.nullcontext():
            yield
    except Cancelled:
        pass  # the user's own choice: nothing to report
    except VISTA3DError as error:
        slicer.util.errorDisplay(f"{title}\n\n{error}")
    except Exception as error:
        logging.error(title, exc_info=error)
        slicer.util.errorDisplay(f"{title}\n\n{error}", detailedText=traceback.format_exc())


def namesInShort(names: list[str], shown: int = 8) -> str:
    """The first ``shown`` names, then how many more: for a message about many segments."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (_(" and {n} more").format(n=more) if more > 0 else "")


def confirmDownload(source) -> bool:
    """Whether the user agrees to download ``source`` (a ``weights.WeightsSource``): its size,
    host, folder and licence are shown."""
    from VISTA3DSlicerLib.weights import cache_dir

    size = source.size_text or _("about 0.4 to 2.6 GB")
    return slicer.util.confirmOkCancelDisplay(
        _("The {title} are not on this computer yet. Download them ({size}) from {host} into {folder}?\n\n{licence}")
        .format(title=source.title, size=size, host=source.host, folder=cache_dir(), licence=source.licence_note))


def downloadAllowed(missing) -> bool:
    """``allowDownload`` for a run that needs ``missing`` (a weights source, or None when the
    checkpoint is here): the user is asked, and a "no" stops the run with what to do instead."""
    if missing is None:
        return False
    if not confirmDownload(missing):
        raise VISTA3DError(_("VISTA3D cannot run without the {title}. Download them, or choose a checkpoint "
                             "file you already have (Model > Use a file...).").format(title=missing.title))
    return True


def installDependencies(logic, runtime: str = "torch") -> None:
    """Install the packages VISTA3D needs that are missing, after asking; a "no" stops with a message."""
    unmet = logic.missingDependencies(runtime)
    if not unmet:
        return
    packages = ", ".join(map(str, unmet))
    if not slicer.util.confirmOkCancelDisplay(
        _("VISTA3D needs these Python packages, which are not installed or not at a version it can use:"
          "\n\n{packages}\n\nDownload and install them now? This can take a few minutes.").format(packages=packages)
    ):
        raise VISTA3DError(_("VISTA3D cannot run without these Python packages: {packages}.").format(packages=packages))
    with slicer.util.WaitCursor():
        logic.installDependencies(runtime)
