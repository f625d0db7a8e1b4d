"""The chat panel's CSS and the small script it installs in the page (Enter to send, Copy, Insert below)."""

from __future__ import annotations

import html

STYLE = """<style>
/* As wide as the cell (JupyterLab and Notebook 7 alike); the answers keep their own line length. */
.autocoder-panel { border: 1px solid var(--jp-border-color2, #ddd); border-radius: 8px; padding: 8px;
  background: var(--jp-layout-color1, #fff); width: 100%; box-sizing: border-box;
  font-family: var(--jp-ui-font-family, sans-serif); }
.autocoder-header { justify-content: space-between; align-items: center; gap: 0 12px; flex-wrap: wrap; }
.autocoder-header > .autocoder-titlebox { flex: 0 0 auto; width: auto; }
.autocoder-title { font-weight: 600; font-size: 14px; white-space: nowrap; }
.autocoder-header > .autocoder-status { flex: 1 1 auto; text-align: right; }
.autocoder-status { font-size: 12px; color: var(--jp-ui-font-color2, #666); }
.autocoder-status code { font-size: 11px; }
/* The id shows its first 8 characters; the element holds it all, so a click selects and copies the full id. */
.autocoder-id { display: inline-block; max-width: 9.5ch; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; vertical-align: middle; user-select: all; cursor: text;
  font-family: var(--jp-code-font-family, monospace); }
.autocoder-model { display: inline-block; max-width: 180px; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; vertical-align: top; }
/* Tinted backgrounds are translucent and the text keeps the theme's colour, so both stay readable in light
   and dark themes (an opaque pastel under a dark theme's white text was unreadable). */
.autocoder-state { display: inline-block; padding: 0 6px; border-radius: 8px; background: rgba(99, 102, 241, 0.14); }
.autocoder-state-idle { background: rgba(22, 163, 74, 0.14); }
.autocoder-state-waiting { background: rgba(234, 179, 8, 0.25); }
.autocoder-scroll { max-height: 520px; overflow-y: auto; display: flex; flex-direction: column-reverse;
  border-top: 1px solid var(--jp-border-color2, #eee); border-bottom: 1px solid var(--jp-border-color2, #eee);
  margin: 6px 0; }
.autocoder-transcript { padding: 6px 2px; }
/* Let the scroll box scroll: flex items must keep their height instead of shrinking to fit. */
.autocoder-scroll > *, .autocoder-scroll .widget-box > * { flex-shrink: 0; }
.autocoder-transcript .widget-html, .autocoder-transcript .widget-html-content { width: 100%; height: auto;
  line-height: 1.45; font-size: 13px; }
.autocoder-msg { margin: 4px 0; }
.autocoder-thumb { max-width: 160px; max-height: 120px; margin: 4px 4px 0 0; border-radius: 4px;
  border: 1px solid var(--jp-border-color2, #ddd); vertical-align: top; }
.autocoder-user .autocoder-thumb { display: block; }
.autocoder-attach-row { align-items: center; gap: 4px; flex-wrap: wrap; }
.autocoder-attachments .autocoder-thumb { max-height: 48px; }
.autocoder-transcript .autocoder-user { align-self: flex-end; width: auto; max-width: 80%; }
.autocoder-user .widget-html-content { background: rgba(59, 130, 246, 0.18); padding: 6px 10px;
  border-radius: 12px 12px 2px 12px; white-space: pre-wrap; }
.autocoder-assistant { width: 100%; }
.autocoder-assistant p { margin: 4px 0; }
.autocoder-assistant pre, .autocoder-card pre { background: var(--jp-layout-color2, #f6f8fa); padding: 8px;
  border-radius: 6px; overflow-x: auto; font-size: 12px; margin: 0; white-space: pre; }
.autocoder-assistant blockquote { margin: 4px 0; padding: 0 10px; border-left: 3px solid
  var(--jp-border-color1, #bbb); color: var(--jp-ui-font-color2, #555); }
.autocoder-assistant table { border-collapse: collapse; } .autocoder-assistant td, .autocoder-assistant th {
  border: 1px solid #ccc; padding: 2px 6px; }
.autocoder-code { border: 1px solid var(--jp-border-color2, #e1e4e8); border-radius: 6px; margin: 4px 0; }
.autocoder-codehead { display: flex; justify-content: space-between; font-size: 11px; padding: 2px 8px;
  color: var(--jp-ui-font-color2, #666); }
.autocoder-copy, .autocoder-insert { font-size: 11px; cursor: pointer; border: 1px solid #ccc;
  border-radius: 4px; background: transparent; margin-left: 4px; }
.autocoder-card { border: 1px solid var(--jp-border-color2, #e1e4e8); border-left: 3px solid #6b7280;
  border-radius: 6px; padding: 4px 8px; margin: 4px 0; font-size: 12px; }
.autocoder-card-ok { border-left-color: #16a34a; } .autocoder-card-error { border-left-color: #dc2626; }
.autocoder-card-ask { border-left-color: #d97706; background: rgba(245, 158, 11, 0.08); }
.autocoder-card-denied { border-left-color: #9ca3af; }
.autocoder-card-head { font-family: var(--jp-code-font-family, monospace); }
.autocoder-badge { font-size: 11px; padding: 0 6px; border-radius: 8px; background: rgba(128, 128, 128, 0.18);
  margin-left: 6px; }
.autocoder-args summary { cursor: pointer; color: var(--jp-ui-font-color2, #666); font-size: 11px; }
.autocoder-args pre { white-space: pre-wrap; margin: 2px 0 4px; }
.autocoder-outcome { font-style: italic; color: var(--jp-ui-font-color2, #555); }
/* In a narrow notebook the answers wrap onto more lines rather than scroll out of sight. */
.autocoder-panel .autocoder-approval { flex-wrap: wrap; overflow: visible; gap: 4px 0; }
.autocoder-reason { width: 280px; max-width: 100%; }
.autocoder-summary { color: var(--jp-ui-font-color2, #555); white-space: pre-wrap; font-family:
  var(--jp-code-font-family, monospace); font-size: 11px; }
.autocoder-diff .add { color: #15803d; } .autocoder-diff .del { color: #b91c1c; }
.autocoder-diff .hunk { color: #6d28d9; }
[data-jp-theme-light="false"] .autocoder-diff .add { color: #4ade80; }
[data-jp-theme-light="false"] .autocoder-diff .del { color: #f87171; }
[data-jp-theme-light="false"] .autocoder-diff .hunk { color: #c4b5fd; }
.autocoder-notice .widget-html-content { color: var(--jp-ui-font-color2, #666); font-size: 12px;
  font-style: italic; }
.autocoder-error .widget-html-content { color: #991b1b; background: #fef2f2; border: 1px solid #fecaca;
  border-radius: 6px; padding: 4px 8px; }
.autocoder-trust-bar { border: 1px solid #fcd34d; background: rgba(245, 158, 11, 0.08); border-radius: 6px;
  padding: 4px 8px; margin: 4px 0; flex-wrap: wrap; }
.autocoder-trust-note .widget-html-content { font-size: 12px; white-space: normal; line-height: 1.4; }
.autocoder-trust-bar .auto-coder-trust { width: auto; align-self: flex-start; }
.autocoder-cell { border-top: 1px dashed var(--jp-border-color2, #ddd); padding-top: 2px; margin-top: 2px; }
.autocoder-cell .autocoder-revert { align-self: flex-start; }
.autocoder-turn > .autocoder-rewind { align-self: flex-end; font-size: 11px; height: 22px; line-height: 22px; }
.autocoder-reasoning { font-size: 12px; }
.autocoder-reasoning pre { white-space: pre-wrap; color: var(--jp-ui-font-color2, #666); }
.autocoder-input textarea { font-size: 13px; min-height: 56px; }
/* The themes' button colours under white text read at 2.2-3.7:1 (Stop, Always, Approve...); these shades read at
   5:1 or more in light and dark themes alike (WCAG asks 4.5:1). Pressed: a shade darker. */
.autocoder-panel button.jupyter-button.mod-primary { background-color: #1565c0; color: #fff; }
.autocoder-panel button.jupyter-button.mod-warning { background-color: #b45309; color: #fff; }
.autocoder-panel button.jupyter-button.mod-success { background-color: #15803d; color: #fff; }
.autocoder-panel button.jupyter-button.mod-info { background-color: #0e7490; color: #fff; }
.autocoder-panel button.jupyter-button.mod-danger { background-color: #b91c1c; color: #fff; }
.autocoder-panel button.jupyter-button.mod-primary:active { background-color: #0d47a1; }
.autocoder-panel button.jupyter-button.mod-warning:active { background-color: #92400e; }
.autocoder-panel button.jupyter-button.mod-success:active { background-color: #166534; }
.autocoder-panel button.jupyter-button.mod-info:active { background-color: #155e75; }
.autocoder-panel button.jupyter-button.mod-danger:active { background-color: #991b1b; }
/* ipywidgets only fades a disabled button, so a disabled Stop still looks half-active: grey it out. */
.autocoder-panel button.jupyter-button:disabled { background: var(--jp-layout-color3, #e0e0e0);
  color: var(--jp-ui-font-color3, #888); opacity: 1; box-shadow: none; cursor: not-allowed; }
</style>"""


# What ipywidgets cannot do from the kernel, done in the page where the frontend runs inline handlers
# (JupyterLab, Notebook 7); elsewhere the buttons do nothing and Enter is a newline (Send still works).
# Installed once per page by an image that fails to load.
# - Enter sends, Shift+Enter is a new line. The input syncs its value on blur (continuous_update=False):
#   blurring first sends the whole text in one update, ahead of the click (per-keystroke updates are
#   throttled by ipywidgets and could arrive after it).
# - Copy uses the clipboard (or selects the code where the clipboard is not allowed).
# - Insert below: a kernel can only add a cell while it executes one (set_next_input), so the page does
#   what a user would: select the panel's cell, insert a cell below (B), type the code into it.
FRONTEND_JS = """
if (!window.autocoder) {
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const press = (key, code, keyCode) => document.activeElement.dispatchEvent(new KeyboardEvent('keydown',
    {key: key, code: code, keyCode: keyCode, which: keyCode, bubbles: true, cancelable: true}));
  const codeOf = (button) => button.closest('.autocoder-code').querySelector('code');
  window.autocoder = {
    copy: async (button) => {
      try {
        await navigator.clipboard.writeText(codeOf(button).innerText);
        button.textContent = 'Copied';
      } catch (error) {
        const range = document.createRange();
        range.selectNodeContents(codeOf(button));
        getSelection().removeAllRanges();
        getSelection().addRange(range);
        button.textContent = 'Selected: press Ctrl+C';
      }
    },
    insert: async (button) => {
      const cell = button.closest('.jp-Cell');
      const prompt = cell && cell.querySelector('.jp-InputPrompt');
      if (!prompt) return window.autocoder.copy(button);
      const below = cell.nextElementSibling;
      for (const type of ['mousedown', 'mouseup', 'click']) {
        prompt.dispatchEvent(new MouseEvent(type, {bubbles: true, button: 0}));
      }
      await sleep(50);
      press('b', 'KeyB', 66);
      await sleep(100);
      if (!cell.nextElementSibling || cell.nextElementSibling === below) return window.autocoder.copy(button);
      press('Enter', 'Enter', 13);
      await sleep(100);
      document.execCommand('insertText', false, codeOf(button).innerText);
      press('Escape', 'Escape', 27);
      button.textContent = 'Inserted';
    },
  };
  document.addEventListener('keydown', (event) => {
    const input = event.target.closest && event.target.closest('.autocoder-input');
    if (!input || event.key !== 'Enter' || event.shiftKey || event.isComposing) return;
    event.preventDefault();
    event.stopPropagation();
    const send = input.closest('.autocoder-panel').querySelector('.autocoder-send');
    if (send && !send.disabled) {
      event.target.blur();
      send.click();
      event.target.focus();
    }
  }, true);
}
"""
FRONTEND = f'<img alt="" style="display:none" src="data:image/gif;base64," onerror="{html.escape(FRONTEND_JS)}">'
