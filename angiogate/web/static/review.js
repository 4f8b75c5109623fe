// angiogate review pages: select-all, confirmations, the on-demand heat map.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", () => {
      document.querySelectorAll("input[name=ids]").forEach((box) => { box.checked = all.checked; });
    });
  }
  document.querySelectorAll("button[data-confirm]").forEach((button) => {
    button.addEventListener("click", (event) => {
      if (!window.confirm(button.dataset.confirm)) event.preventDefault();
    });
  });
  const heat = document.getElementById("make-heatmap");
  if (heat) {
    heat.addEventListener("click", async () => {
      const out = document.getElementById("heatmap-result");
      heat.disabled = true;
      out.textContent = "Running the model on occluded copies of the clip...";
      try {
        const answer = await fetch(heat.dataset.url, {credentials: "same-origin"});
        const result = await answer.json();
        if (!answer.ok) throw new Error(result.error || answer.statusText);
        out.innerHTML = "";
        const img = document.createElement("img");
        img.id = "heatmap";
        img.src = result.png;
        img.alt = "occlusion heat map";
        out.appendChild(img);
        const p = document.createElement("p");
        p.className = "hint";
        p.textContent = `P(unsatisfactory) ${result.score} on the review copy of the model; the largest patch ` +
          `changed it by ${result.max_change}. Per sampled frame: ` +
          result.frame_changes.map((c, k) => `${result.frame_indices[k]}: ${c >= 0 ? "+" : ""}${c}`).join(", ");
        out.appendChild(p);
      } catch (error) {
        out.textContent = "No heat map: " + error.message;
      } finally {
        heat.disabled = false;
      }
    });
  }
});
