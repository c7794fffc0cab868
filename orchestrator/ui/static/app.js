// The dashboard's only script (served from this app; the page allows no other): live updates over
// server-sent events, sortable tables, and the timeline's bar positions.
"use strict";

function layout() {
  document.querySelectorAll(".bar[data-left]").forEach((bar) => {
    bar.style.left = bar.dataset.left + "%";
    bar.style.width = bar.dataset.width + "%";
  });
}

function sortable() {
  document.querySelectorAll("table.sortable th[data-sort]").forEach((th, column) => {
    th.addEventListener("click", () => {
      const body = th.closest("table").tBodies[0];
      const numeric = th.dataset.sort === "number";
      const down = th.dataset.dir !== "down";
      th.dataset.dir = down ? "down" : "up";
      const value = (row) => row.cells[column].dataset.value || "";
      const rows = Array.from(body.rows).sort((a, b) => {
        const x = numeric ? parseFloat(value(a)) || 0 : value(a);
        const y = numeric ? parseFloat(value(b)) || 0 : value(b);
        return (x < y ? -1 : x > y ? 1 : 0) * (down ? -1 : 1);
      });
      rows.forEach((row) => body.appendChild(row));
    });
  });
}

function live() {
  const source = document.body.dataset.events;
  const fragment = document.body.dataset.fragment;
  if (!source || !fragment) return;
  const badge = document.getElementById("live");
  const events = new EventSource(source);
  events.addEventListener("open", () => badge && badge.classList.add("on"));
  events.addEventListener("error", () => badge && badge.classList.remove("on"));
  events.addEventListener("change", async () => {
    const open = Array.from(document.querySelectorAll("details[open]")).map((d) => d.closest("[id]")?.id + d.querySelector("summary")?.textContent);
    const typing = document.activeElement && document.activeElement.tagName === "INPUT";
    if (typing) return; // don't wipe a note being written; the next change brings the page up to date
    const response = await fetch(fragment, { credentials: "same-origin" });
    if (!response.ok) return;
    document.getElementById("main").innerHTML = await response.text();
    document.querySelectorAll("details").forEach((d) => {
      const key = d.closest("[id]")?.id + d.querySelector("summary")?.textContent;
      if (open.includes(key)) d.open = true;
    });
    layout();
    sortable();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  layout();
  sortable();
  live();
});
