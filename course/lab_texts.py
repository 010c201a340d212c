"""What each lab's header prints: its title, its summary in English and Spanish, and what its CPU path
does differently. ``course.learner.lab_header("03")`` reads it from here, so a lab's setup cell stays short.

Learners' older copies of the labs pass these texts to ``lab_header`` themselves; that keeps working.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LabText:
    title: str
    summary_en: str
    summary_es: str
    cpu_note_en: str
    cpu_note_es: str


LABS: dict[str, LabText] = {
    "01": LabText(
        title=('LoRA from scratch'),
        summary_en=('You wrap a linear layer of the pretrained MiniGPT in a LoRA adapter by hand, show that it is a '
                    'no-op at initialisation, count its parameters against the closed form r (d_in + d_out), merge '
                    'and unmerge it, and get the same outputs and counts as peft on the same weights.'),
        summary_es=('Envuelves a mano una capa lineal del MiniGPT preentrenado en un adaptador LoRA, compruebas que '
                    'al inicio no cambia nada, cuentas sus parámetros frente a la fórmula r (d_in + d_out), lo '
                    'fusionas y lo separas, y obtienes las mismas salidas y cuentas que peft con los mismos pesos.'),
        cpu_note_en=('Nothing in this lab needs a GPU: it checks correctness (shapes, counts, equalities), and every '
                     'cell runs the same on CPU, except the last: on a GPU it measures two training steps against the '
                     'estimate (on CPU it says it was skipped).'),
        cpu_note_es=('Nada en este lab necesita GPU: comprueba la corrección (formas, cuentas, igualdades) y todas las'
                     ' celdas corren igual en CPU, salvo la última: en GPU mide dos pasos de entrenamiento frente a la'
                     ' estimación (en CPU dice que se omitió).'),
    ),
    "02": LabText(
        title=('Full fine-tuning versus LoRA on a pretrained MiniLM'),
        summary_en=('You fine-tune a real pretrained encoder, MiniLM (all-MiniLM-L6-v2, shipped offline), as a '
                    'Rotten Tomatoes sentiment classifier three ways on one budget: in full, with LoRA from '
                    "minigpt.lora and with LoRA from peft. You predict what each trains and what AdamW holds, check"
                    ' that the two LoRAs compute the same losses, judge the accuracies against the majority '
                    "baseline, save the adapter in peft's format and size it, merge it, and set accuracy, trainable"
                    ' parameters and peak memory beside the committed 2,000-review benchmark.'),
        summary_es=('Ajustas un codificador preentrenado de verdad, MiniLM (all-MiniLM-L6-v2, sin descargas), como '
                    'clasificador de sentimiento de Rotten Tomatoes de tres maneras con el mismo presupuesto: '
                    'completo, con LoRA de minigpt.lora y con LoRA de peft. Predices lo que entrena cada uno y lo que'
                    ' guarda AdamW, compruebas que las dos LoRA dan las mismas pérdidas, comparas las exactitudes con '
                    'la clase mayoritaria, guardas el adaptador en el formato de peft y lo mides, lo fusionas y pones '
                    'exactitud, parámetros entrenables y pico de memoria junto al benchmark guardado de 2.000 reseñas.'),
        cpu_note_en=('Everything runs on the CPU the same way: training, scoring, and the memory of a step, tracked '
                     "by the package's live-tensor tracker (labelled so). Only the last two code cells need a GPU "
                     '(they time a step of each method, read torch.cuda.max_memory_allocated and compare it with '
                     'the estimate); on CPU they say what they would measure, because PyTorch has no peak-memory '
                     'counter for the CPU.'),
        cpu_note_es=('Todo corre igual en CPU: el entrenamiento, la evaluación y la memoria de un paso, que rastrea '
                     'el rastreador de tensores del paquete (con esa etiqueta). Solo las dos últimas celdas de '
                     'código necesitan GPU (miden un paso de cada método, leen torch.cuda.max_memory_allocated y lo '
                     'comparan con la estimación); en CPU explican qué medirían, porque PyTorch no tiene contador de '
                     'pico de memoria para la CPU.'),
    ),
    "03": LabText(
        title=('Where the memory of a training step goes'),
        summary_en=('You take one training step apart, bucket by bucket: predict weights, gradients, AdamW state and '
                    'activations with pencil-and-paper formulas, measure the same step with minigpt.memory and '
                    'explain each gap; sweep batch and length, switch checkpointing, follow one step op by op, and '
                    'size MiniGPT-85M and LLaMA-7B (full, LoRA, QLoRA) on fake tensors; then run a sharded fine-tune for '
                    'real on 2 CPU ranks (DDP, ZeRO-1, FSDP2) and hold each rank against the estimate.'),
        summary_es=('Desmontas un paso de entrenamiento cubeta por cubeta: predices pesos, gradientes, estado de '
                    'AdamW y activaciones con fórmulas de lápiz y papel, mides el mismo paso con minigpt.memory y '
                    'explicas cada diferencia; barres lote y longitud, activas el checkpointing, sigues un paso '
                    'operación a operación y dimensionas MiniGPT-85M y LLaMA-7B (completo, LoRA, QLoRA) con tensores '
                    'falsos; después ejecutas de verdad un ajuste repartido en 2 rangos de CPU (DDP, ZeRO-1, FSDP2) y '
                    'comparas cada rango con la estimación.'),
        cpu_note_en=('Parts 1-4, 6 and 7 run the same everywhere (CPU tracker, fake tensors, CPU ranks over gloo). Three cells take another '
                     'path on CPU because PyTorch has no peak-memory counter for the CPU: the timeline of part 5 shows'
                     " the tracker's curve only (no allocator curves), and part 8 prints the tracked CPU figures, "
                     "labelled 'tracked on CPU', instead of torch.cuda.max_memory_allocated; the last one (measured "
                     'against the estimate) says it was skipped.'),
        cpu_note_es=('Las partes 1-4, 6 y 7 corren igual en todas partes (rastreador de CPU, tensores falsos, rangos '
                     'de CPU con gloo). Tres '
                     'celdas siguen otro camino en CPU porque PyTorch no tiene contador de pico para la CPU: la línea '
                     'de tiempo de la parte 5 solo muestra la curva del rastreador (sin curvas del asignador) y la '
                     "parte 8 muestra las cifras rastreadas en CPU, con la etiqueta 'tracked on CPU', en lugar de "
                     'torch.cuda.max_memory_allocated; la última (medida frente a la estimación) dice que se omitió.'),
    ),
    "04": LabText(
        title=('NF4 and QLoRA'),
        summary_en=('You build NF4 from normal quantiles, quantise and pack a weight byte for byte like bitsandbytes,'
                    ' compute its bits per weight with and without double quantisation, measure its error on a '
                    'pretrained MiniGPT, then fine-tune MiniGPT with QLoRA beside LoRA and compare their loss and '
                    'their memory with full fine-tuning; last, QLoRA and LoRA on a pretrained MiniLM classifier, '
                    'accuracy beside memory.'),
        summary_es=('Construyes NF4 a partir de cuantiles de la normal, cuantizas y empaquetas un peso byte a byte '
                    'como bitsandbytes, calculas sus bits por peso con y sin doble cuantización, mides su error en un'
                    ' MiniGPT preentrenado y ajustas MiniGPT con QLoRA junto a LoRA, comparando pérdida y memoria con'
                    ' el ajuste completo; por último, QLoRA y LoRA sobre un clasificador MiniLM preentrenado, '
                    'exactitud junto a memoria.'),
        cpu_note_en=('Everything but the last two code cells runs the same on CPU: NF4 is plain PyTorch here, and the '
                     "memory of part 6 is tracked on CPU by the package's live-tensor tracker (labelled so). Those two"
                     ' need torch.cuda.max_memory_allocated, which has no CPU counterpart: on CPU they say so.'),
        cpu_note_es=('Todo salvo las dos últimas celdas de código corre igual en CPU: aquí NF4 es PyTorch puro y la '
                     'memoria de la parte 6 la rastrea en CPU el rastreador de tensores del paquete (con esa '
                     'etiqueta). Esas dos necesitan torch.cuda.max_memory_allocated, que no existe en CPU: allí lo '
                     'indican.'),
    ),
    "05": LabText(
        title=('The fp16 LoRA puzzle'),
        summary_en=("You re-run a learner's eight RoBERTa-base runs (fp16/fp32 x full/LoRA x short/long inputs), "
                    'traced bucket by bucket, and answer their four questions with evidence: what grows with the '
                    'input length, batch versus length, why nvidia-smi is not the peak, and what makes LoRA heavier; then '
                    'you check the verdicts on MiniLM trained for real in the same settings, tracked on the CPU.'),
        summary_es=('Repites las ocho ejecuciones de RoBERTa-base de un estudiante (fp16/fp32 x completo/LoRA x '
                    'entradas cortas/largas), trazadas cubeta por cubeta, y respondes a sus cuatro preguntas con '
                    'pruebas: qué crece con la longitud, lote frente a longitud, por qué nvidia-smi no es el pico y '
                    'qué hace más pesado a LoRA; después compruebas los veredictos con MiniLM entrenado de verdad en '
                    'los mismos ajustes, rastreado en la CPU.'),
        cpu_note_en=('Every trace runs on CPU (fake tensors, simulated CUDA), and part 6 tracks real MiniLM steps on '
                     'the CPU (bf16 autocast stands for the fp16 autocast of a GPU). Only the GPU cells at the end need a '
                     'GPU: on CPU they print what they would measure instead, because torch.cuda and NVML have no CPU '
                     'counterpart.'),
        cpu_note_es=('Todas las trazas corren en CPU (tensores falsos, CUDA simulada), y la parte 6 rastrea pasos '
                     'reales de MiniLM en la CPU (el autocast bf16 hace las veces del autocast fp16 de una GPU). '
                     'Solo las celdas de GPU del '
                     'final necesitan GPU: en CPU explican lo que medirían, porque torch.cuda y NVML no tienen '
                     'equivalente en CPU.'),
    ),
}
