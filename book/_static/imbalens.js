// On a first visit (empty localStorage) the theme's head script sets data-mode to "" and
// the pydata-sphinx-theme bundle then logs "Got invalid theme mode: . Resetting to auto."
// as a console error. This runs before that (deferred) bundle and starts from "auto".
if (!document.documentElement.dataset.mode) {
  document.documentElement.dataset.mode = "auto";
}
